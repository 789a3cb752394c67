//! The Redis side: one shared, self-reconnecting connection for commands and pipelines, and a
//! dedicated connection per transaction.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, Value};

use crate::config::GatewayConfig;
use crate::error::{GatewayError, from_redis, server_error_text};

/// How a transaction ended.
#[derive(Debug)]
pub(crate) enum TransactionOutcome {
    /// EXEC ran: one reply per command, runtime errors inline as `Value::ServerError`.
    Executed(Vec<Value>),
    /// Redis refused the transaction as a whole (EXECABORT); the Redis error text of the cause.
    Refused(String),
}

/// Connections to the Redis server behind the gateway.
#[derive(Clone)]
pub(crate) struct Backend {
    client: Client,
    /// Multiplexed and shared by every request; it reconnects by itself after an I/O error, so
    /// the gateway recovers when Redis comes back without a restart.
    shared: ConnectionManager,
    transaction_config: AsyncConnectionConfig,
}

impl Backend {
    /// Prepares the connections without connecting: the gateway starts (and answers 503) while
    /// Redis is still down.
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, redis::RedisError> {
        let client = Client::open(config.redis_url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            // Few, short reconnect attempts per failure: a request waits for them, and a client
            // is better served by a quick 503 than by a request hanging while Redis is down.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let shared = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let transaction_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        Ok(Self {
            client,
            shared,
            transaction_config,
        })
    }

    /// The Redis address for logs (never the password).
    pub(crate) fn address(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    /// Runs one command. A Redis error reply becomes [`GatewayError::BadRequest`] with its text.
    pub(crate) async fn command(&self, cmd: &Cmd) -> Result<Value, GatewayError> {
        let mut connection = self.shared.clone();
        match connection.send_packed_command(cmd).await {
            Ok(Value::ServerError(error)) => {
                Err(GatewayError::BadRequest(server_error_text(&error)))
            }
            Ok(value) => Ok(value),
            Err(error) => Err(from_redis(&error)),
        }
    }

    /// Runs commands as one pipeline (not atomic). Returns one value per command; errors of
    /// single commands are inline `Value::ServerError`s.
    pub(crate) async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, GatewayError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let count = cmds.len();
        let pipeline = pipeline_of(cmds);
        let mut connection = self.shared.clone();
        let values = connection
            .send_packed_commands(&pipeline, 0, count)
            .await
            .map_err(|error| from_redis(&error))?;
        expect_len(values, count)
    }

    /// Runs commands as `MULTI` … `EXEC` on a connection of its own.
    ///
    /// A fresh connection per transaction means no other request's commands can ever be queued
    /// inside it, and a transaction left open by a failure dies with its connection.
    pub(crate) async fn transaction(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<TransactionOutcome, GatewayError> {
        let count = cmds.len();
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.transaction_config)
            .await
            .map_err(|error| from_redis(&error))?;
        // Sent as a plain pipeline (MULTI, the commands, EXEC) so every reply comes back,
        // including the queueing errors that explain an EXECABORT.
        let mut all = Vec::with_capacity(count + 2);
        all.push(redis::cmd("MULTI"));
        all.extend(cmds);
        all.push(redis::cmd("EXEC"));
        let pipeline = pipeline_of(all);
        let mut replies = connection
            .send_packed_commands(&pipeline, 0, count + 2)
            .await
            .map_err(|error| from_redis(&error))?;
        let replies_len = replies.len();
        let exec = replies.pop();
        match exec {
            Some(Value::Array(values)) if replies_len == count + 2 => {
                expect_len(values, count).map(TransactionOutcome::Executed)
            }
            Some(Value::ServerError(exec_error)) => {
                // The first queueing error (an unknown command, a wrong arity) is the cause;
                // EXECABORT itself only says that there was one.
                let cause = replies.iter().find_map(|reply| match reply {
                    Value::ServerError(error) => Some(server_error_text(error)),
                    _ => None,
                });
                Ok(TransactionOutcome::Refused(
                    cause.unwrap_or_else(|| server_error_text(&exec_error)),
                ))
            }
            Some(Value::Nil) => Ok(TransactionOutcome::Refused(
                "EXECABORT Transaction discarded".into(),
            )),
            other => Err(GatewayError::Internal(format!(
                "unexpected reply to EXEC: {other:?}"
            ))),
        }
    }
}

fn pipeline_of(cmds: Vec<Cmd>) -> Pipeline {
    let mut pipeline = Pipeline::with_capacity(cmds.len());
    for cmd in cmds {
        pipeline.add_command(cmd);
    }
    pipeline
}

fn expect_len(values: Vec<Value>, count: usize) -> Result<Vec<Value>, GatewayError> {
    if values.len() == count {
        Ok(values)
    } else {
        Err(GatewayError::Internal(format!(
            "Redis returned {} replies for {count} commands",
            values.len()
        )))
    }
}
