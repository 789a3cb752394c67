//! Walking and deleting keys by prefix, with each backend's own client: `SCAN` + `UNLINK` on
//! Redis (on every primary of a Cluster) and the same commands through the KV REST API.
//!
//! `SCAN` is cursor-based and does a bounded amount of work per call
//! (<https://redis.io/docs/latest/commands/scan/>): keys that exist for the whole walk are
//! returned at least once, keys created or deleted meanwhile may or may not be. `UNLINK` frees
//! memory in a background thread (<https://redis.io/docs/latest/commands/unlink/>), so neither
//! command holds the server for long, whatever the size of the keyspace.

use std::time::Duration;

use idempotency::redis::redis::{self, ConnectionAddr, IntoConnectionInfo, aio};
use serde_json::Value as Json;

use crate::error::CliError;
use crate::sql::{SqlNode, unglob};

/// Where the keys live.
pub(crate) enum Keyspace {
    /// One Redis server: its URL, read from the variable the store came from.
    Redis(String),
    /// A Redis Cluster: the seed node URLs.
    Cluster(Vec<String>),
    /// The KV REST API.
    Rest {
        client: reqwest::Client,
        url: String,
        token: String,
    },
    /// The SQL store's records table (walked through the opened store's pool).
    Sql,
}

/// One server to walk: a Redis server or Cluster primary, or the REST endpoint.
pub(crate) enum Node {
    Redis {
        conn: aio::MultiplexedConnection,
        /// Cluster primaries refuse multi-key commands across slots, so they get one `UNLINK`
        /// per key (pipelined).
        one_key_per_unlink: bool,
        name: String,
    },
    Rest {
        client: reqwest::Client,
        url: String,
        token: String,
    },
    /// The SQL store's records table.
    Sql(Box<SqlNode>),
}

/// How long one network exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Keyspace {
    pub(crate) fn redis(url: String) -> Self {
        Self::Redis(url)
    }

    pub(crate) fn cluster(urls: Vec<String>) -> Self {
        Self::Cluster(urls)
    }

    pub(crate) fn rest(url: String, token: String) -> Result<Self, CliError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| CliError::Keyspace(format!("building the HTTP client: {e}")))?;
        Ok(Self::Rest { client, url, token })
    }

    /// What the KV REST API answers to a `PING`: [`Reply::NoAnswer`] when no answer came
    /// (connection refused, DNS, timeout), [`Reply::Refused`] for 401 or 403 (the token), else
    /// [`Reply::Answered`]. Other keyspaces: [`Reply::Answered`] (their servers are checked
    /// when the store connects).
    pub(crate) async fn ping(&self) -> Reply {
        let Self::Rest { client, url, token } = self else {
            return Reply::Answered;
        };
        match client
            .post(url.as_str())
            .bearer_auth(token)
            .json(&serde_json::json!(["PING"]))
            .send()
            .await
        {
            Err(_) => Reply::NoAnswer,
            Ok(response)
                if matches!(
                    response.status(),
                    reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
                ) =>
            {
                Reply::Refused(response.status().as_u16())
            }
            Ok(_) => Reply::Answered,
        }
    }

    /// The servers to walk.
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>, CliError> {
        match self {
            Self::Redis(url) => {
                let conn =
                    connect(url.as_str().into_connection_info().map_err(redis_error)?).await?;
                Ok(vec![Node::Redis {
                    conn,
                    one_key_per_unlink: false,
                    name: "redis".into(),
                }])
            }
            Self::Cluster(seeds) => cluster_primaries(seeds).await,
            Self::Rest { client, url, token } => Ok(vec![Node::Rest {
                client: client.clone(),
                url: url.trim_end_matches('/').to_owned(),
                token: token.clone(),
            }]),
            // Walked through the opened store (see `Opened::nodes`).
            Self::Sql => Err(CliError::Keyspace(
                "the SQL table is walked through its store".into(),
            )),
        }
    }
}

fn redis_error(error: redis::RedisError) -> CliError {
    CliError::Keyspace(format!("redis: {error}"))
}

async fn connect(info: redis::ConnectionInfo) -> Result<aio::MultiplexedConnection, CliError> {
    let client = redis::Client::open(info).map_err(redis_error)?;
    tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| CliError::Keyspace("connecting to redis timed out".into()))?
        .map_err(redis_error)
}

/// Every primary of the cluster, from `CLUSTER NODES` on the first seed that answers
/// (<https://redis.io/docs/latest/commands/cluster-nodes/>), reached with the seed's
/// credentials and TLS settings.
async fn cluster_primaries(seeds: &[String]) -> Result<Vec<Node>, CliError> {
    let mut last_error = CliError::Keyspace("REDIS_CLUSTER_URLS names no node".into());
    for seed in seeds {
        let info = match seed.as_str().into_connection_info() {
            Ok(info) => info,
            Err(e) => {
                last_error = redis_error(e);
                continue;
            }
        };
        let mut conn = match connect(info.clone()).await {
            Ok(conn) => conn,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let text: String = match redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
        {
            Ok(text) => text,
            Err(e) => {
                last_error = redis_error(e);
                continue;
            }
        };
        let mut nodes = Vec::new();
        for (host, port) in primaries_in(&text) {
            let host = if host.is_empty() {
                seed_host(info.addr())
            } else {
                host
            };
            let addr = match info.addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host.clone(), port),
            };
            let conn = connect(info.clone().set_addr(addr)).await?;
            nodes.push(Node::Redis {
                conn,
                one_key_per_unlink: true,
                name: format!("{host}:{port}"),
            });
        }
        if nodes.is_empty() {
            return Err(CliError::Keyspace(
                "CLUSTER NODES lists no reachable primary".into(),
            ));
        }
        return Ok(nodes);
    }
    Err(last_error)
}

fn seed_host(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => "127.0.0.1".into(),
    }
}

/// `(host, port)` of each healthy primary in a `CLUSTER NODES` reply: lines of
/// `id ip:port@cport[,hostname] flags master-id ...`.
fn primaries_in(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _id = fields.next()?;
            let address = fields.next()?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| matches!(*f, "fail" | "noaddr")) {
                return None;
            }
            let host_port = address.split(['@', ',']).next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Escape the glob characters of `SCAN … MATCH` (`* ? [ ] \`) so `literal` matches itself.
pub(crate) fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 4);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Node {
    /// A short name for progress lines.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Redis { name, .. } => name,
            Self::Rest { .. } => "kv-rest",
            Self::Sql(_) => "sql",
        }
    }

    /// One `SCAN cursor MATCH pattern COUNT count` step: the next cursor (`"0"` when done)
    /// and the keys of this step.
    pub(crate) async fn scan(
        &mut self,
        cursor: &str,
        pattern: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), CliError> {
        match self {
            Self::Redis { conn, .. } => {
                let reply: (String, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(conn)
                    .await
                    .map_err(redis_error)?;
                // Record keys are ASCII (prefix, escaped scope, visible-ASCII key); anything
                // else is kept as read so it is still counted.
                let keys = reply
                    .1
                    .into_iter()
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect();
                Ok((reply.0, keys))
            }
            Self::Sql(node) => node.scan(cursor, &unglob(pattern), count).await,
            Self::Rest { .. } => {
                let reply = self
                    .rest(serde_json::json!([
                        "SCAN",
                        cursor,
                        "MATCH",
                        pattern,
                        "COUNT",
                        count.to_string()
                    ]))
                    .await?;
                parse_rest_scan(&reply)
            }
        }
    }

    /// Delete `keys` with `UNLINK`; returns how many existed.
    pub(crate) async fn unlink(&mut self, keys: &[String]) -> Result<u64, CliError> {
        if keys.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Redis {
                conn,
                one_key_per_unlink: false,
                ..
            } => redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<u64>(conn)
                .await
                .map_err(redis_error),
            Self::Redis { conn, .. } => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("UNLINK").arg(key);
                }
                let counts: Vec<u64> = pipe.query_async(conn).await.map_err(redis_error)?;
                Ok(counts.iter().sum())
            }
            Self::Sql(node) => node.delete(keys).await,
            Self::Rest { .. } => {
                let mut command = vec![Json::from("UNLINK")];
                command.extend(keys.iter().map(|k| Json::from(k.as_str())));
                let reply = self.rest(Json::Array(command)).await?;
                reply
                    .as_u64()
                    .ok_or_else(|| CliError::Keyspace(format!("UNLINK answered {reply}")))
            }
        }
    }

    /// `PING`-free sanity probe for the doctor: the server's `DBSIZE`.
    pub(crate) async fn dbsize(&mut self) -> Result<u64, CliError> {
        match self {
            Self::Redis { conn, .. } => redis::cmd("DBSIZE")
                .query_async::<u64>(conn)
                .await
                .map_err(redis_error),
            Self::Sql(node) => node.rows().await,
            Self::Rest { .. } => {
                let reply = self.rest(serde_json::json!(["DBSIZE"])).await?;
                reply
                    .as_u64()
                    .ok_or_else(|| CliError::Keyspace(format!("DBSIZE answered {reply}")))
            }
        }
    }

    /// One command through the KV REST API: `POST <url>` with the command as a JSON array and
    /// the bearer token; the answer is `{"result": …}` or `{"error": "…"}` (Upstash's REST API).
    async fn rest(&self, command: Json) -> Result<Json, CliError> {
        let Self::Rest { client, url, token } = self else {
            return Err(CliError::Keyspace("not a REST node".into()));
        };
        let response = client
            .post(url.as_str())
            .bearer_auth(token)
            .json(&command)
            .send()
            .await
            .map_err(|e| CliError::Keyspace(format!("KV REST API: {}", e.without_url())))?;
        let status = response.status();
        let body: Json = response.json().await.map_err(|e| {
            CliError::Keyspace(format!(
                "KV REST API answer ({status}): {}",
                e.without_url()
            ))
        })?;
        if let Some(error) = body.get("error") {
            return Err(CliError::Keyspace(format!(
                "KV REST API ({status}): {error}"
            )));
        }
        body.get("result")
            .cloned()
            .ok_or_else(|| CliError::Keyspace(format!("KV REST API ({status}) sent no result")))
    }
}

/// `["<cursor>", ["k1", …]]` (the cursor may also come as a number).
fn parse_rest_scan(reply: &Json) -> Result<(String, Vec<String>), CliError> {
    let bad = || CliError::Keyspace(format!("SCAN answered {reply}"));
    let parts = reply.as_array().ok_or_else(bad)?;
    let (cursor, keys) = match parts.as_slice() {
        [cursor, keys] => (cursor, keys),
        _ => return Err(bad()),
    };
    let cursor = match cursor {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return Err(bad()),
    };
    let keys = keys
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|k| k.as_str().map(str::to_owned).ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    Ok((cursor, keys))
}

/// A KV REST API's answer to the opening `PING` ([`Keyspace::ping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Some HTTP answer other than a refusal of the token.
    Answered,
    /// 401 or 403: the endpoint is there and refuses the token.
    Refused(u16),
    /// No HTTP answer at all.
    NoAnswer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("idem:a*b?[c]\\:"), "idem:a\\*b\\?\\[c\\]\\\\:");
        assert_eq!(glob_escape("idem:plain%3A:"), "idem:plain%3A:");
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922\n\
                    c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n\
                    d4 127.0.0.1:7002@17002 master,fail - 0 0 3 connected\n\
                    e5 :0@0 master,noaddr - 0 0 4 connected\n";
        assert_eq!(
            primaries_in(text),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
    }

    #[test]
    fn rest_scan_replies_parse() {
        let reply = serde_json::json!(["17", ["a", "b"]]);
        assert_eq!(
            parse_rest_scan(&reply).unwrap(),
            ("17".to_owned(), vec!["a".to_owned(), "b".to_owned()])
        );
        let numeric = serde_json::json!([0, []]);
        assert_eq!(parse_rest_scan(&numeric).unwrap().0, "0");
        assert!(parse_rest_scan(&serde_json::json!({"x": 1})).is_err());
    }
}
