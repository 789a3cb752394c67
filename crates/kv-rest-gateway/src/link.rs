//! One Redis user's shared, multiplexed connection, replaced before use once it is known dead.
//!
//! The `redis` crate's `ConnectionManager` notices a dead connection only when a command fails
//! on it (its disconnect notification is wired up for RESP3 connections only, and the gateway
//! speaks RESP2 so that replies keep the shapes the KV REST API returns). After a Redis restart
//! the first command would fail, and the crate reports the same error whether or not that
//! command reached the socket, so it could not be sent again safely.
//!
//! A [`Link`] owns the connection's I/O task instead: it opens the socket itself, hands it to
//! [`MultiplexedConnection::new_with_config`] (which authenticates as the link's user and
//! selects its database on every connect), and spawns the returned driver future. The driver
//! reads all the time, also while no command is waiting, so it ends as soon as the server
//! closes the connection; the link records that. The next command then gets a new connection
//! before it is sent: a command that has not been handed to a connection never fails because
//! of the old one.
//!
//! A command that was handed to a connection that then failed has an unknown outcome; what to
//! do about that is the caller's decision (see `Backend::command`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, RedisError, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// How many connections one request opens at most before it gives up: one more than needed
/// when the server closes a brand-new connection at once (it is shutting down again).
const MAX_OPENS: usize = 3;

/// One Redis user's shared connection (see the module docs).
pub(crate) struct Link {
    client: Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// The current connection attempt. Requests that arrive while it is running wait for it,
    /// so a burst opens one connection, not one each.
    slot: std::sync::Mutex<Arc<OnceCell<Attempt>>>,
}

type Attempt = Result<Connection, Failed>;

/// A failed connection attempt and when it failed.
#[derive(Clone)]
struct Failed {
    at: Instant,
    error: RedisError,
}

/// A multiplexed connection and whether its I/O task has stopped.
#[derive(Clone)]
pub(crate) struct Connection {
    /// The connection; clones share its socket.
    pub(crate) multiplexed: MultiplexedConnection,
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Whether the connection is known to be dead (its I/O task stopped, or a command on it
    /// failed with a transport error).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection dead, so that the next command gets a new one. For a transport
    /// error seen on it: the I/O task may not have stopped yet when the caller sees the error.
    pub(crate) fn discard(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl Link {
    /// A link that connects on first use. `config`'s response timeout applies to commands;
    /// each connection attempt (TCP connect, `AUTH`, `SELECT`) is limited to `connect_timeout`.
    pub(crate) fn new(
        client: Client,
        config: AsyncConnectionConfig,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            client,
            config,
            connect_timeout,
            slot: std::sync::Mutex::new(Arc::new(OnceCell::new())),
        }
    }

    /// The live connection: the current one, or a new one when the current one is known dead
    /// or no attempt succeeded yet. Nothing is sent on the connection here.
    ///
    /// # Errors
    /// The connection attempt's error (Redis unreachable, the connect timeout, an `AUTH`
    /// refusal). An attempt that failed before this call was made is not reported: a new one
    /// is made instead.
    pub(crate) async fn connection(&self) -> RedisResult<Connection> {
        let asked = Instant::now();
        for _ in 0..MAX_OPENS {
            let attempt = self.current();
            match attempt.get_or_init(|| self.open()).await {
                Ok(connection) if !connection.is_closed() => return Ok(connection.clone()),
                // A failure of an attempt this call waited for is the answer.
                Err(failed) if failed.at >= asked => return Err(failed.error.clone()),
                // Dead, or an older failure: replace it.
                Ok(_) | Err(_) => self.replace(&attempt),
            }
        }
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "Redis closed each new connection at once",
        )))
    }

    /// Drops the current connection (or failed attempt): the next command connects again.
    /// For a user whose credentials were just re-created.
    pub(crate) fn renew(&self) {
        *self.lock() = Arc::new(OnceCell::new());
    }

    fn current(&self) -> Arc<OnceCell<Attempt>> {
        self.lock().clone()
    }

    /// Replaces `attempt` with an empty one, unless another request already did.
    fn replace(&self, attempt: &Arc<OnceCell<Attempt>>) {
        let mut slot = self.lock();
        if Arc::ptr_eq(&slot, attempt) {
            *slot = Arc::new(OnceCell::new());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<OnceCell<Attempt>>> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn open(&self) -> Attempt {
        let opened = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to Redis took longer than {} ms",
                        self.connect_timeout.as_millis()
                    ),
                )))
            });
        opened.map_err(|error| Failed {
            at: Instant::now(),
            error,
        })
    }

    async fn connect(&self) -> RedisResult<Connection> {
        let info = self.client.get_connection_info();
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(info.tcp_settings().nodelay())?;
                self.handshake(stream).await
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                self.handshake(tokio::net::UnixStream::connect(path).await?)
                    .await
            }
            // `rediss://` (a TLS-enabled `redis` build): the crate opens the TLS stream and runs
            // the I/O task itself, so the link cannot see it stop. Such a connection is replaced
            // after a transport error on it (`Connection::discard`), as before: the first
            // command after a Redis restart can fail.
            _ => Ok(Connection {
                multiplexed: self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
                closed: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// Authenticates and selects the database on `stream`, then runs the connection's I/O task,
    /// which marks the connection dead when it stops.
    async fn handshake<S>(&self, stream: S) -> RedisResult<Connection>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = self.client.get_connection_info();
        let (multiplexed, driver) = MultiplexedConnection::new_with_config(
            info.redis_settings(),
            stream,
            self.config.clone(),
        )
        .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let marker = Arc::clone(&closed);
        // The task ends when the server closes the connection, on a transport error, or when
        // the last clone of `multiplexed` is dropped.
        tokio::spawn(async move {
            driver.await;
            marker.store(true, Ordering::Release);
        });
        Ok(Connection {
            multiplexed,
            closed,
        })
    }
}
