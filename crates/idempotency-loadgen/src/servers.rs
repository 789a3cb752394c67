//! Servers the run needs, all on 127.0.0.1 and all stopped at the end: a Redis server and a
//! 3-master Redis Cluster (the testkit fixtures), the KV REST gateway in process, and the HTTP
//! apps (see `http`).

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use idempotency_testkit::fixtures::{RedisCluster, RedisServer};
use tokio::sync::oneshot;

/// Something serving on 127.0.0.1 from its own runtime thread (as a separate process would),
/// until [`Background::stop`].
pub(crate) struct Background {
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<Result<()>>,
}

impl Background {
    /// Bind 127.0.0.1:0 on a new two-thread runtime and run `serve` there until stopped.
    pub(crate) fn spawn<F, Fut>(name: &str, serve: F) -> Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("bench-{name}"))
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let bound = async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let addr = listener.local_addr()?;
                        Ok::<_, anyhow::Error>((listener, addr))
                    }
                    .await;
                    match bound {
                        Ok((listener, addr)) => {
                            let _ = addr_tx.send(Ok(addr));
                            serve(listener, stopped).await
                        }
                        Err(error) => {
                            let _ = addr_tx.send(Err(anyhow!("binding: {error:#}")));
                            Err(error)
                        }
                    }
                })
            })?;
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("{name} server did not start"))??;
        Ok(Self { addr, stop, thread })
    }

    /// Ask the server to stop and wait for its thread.
    pub(crate) fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow!("a server thread panicked"))?
    }
}

/// The bearer token of the in-process gateway.
pub(crate) const GATEWAY_TOKEN: &str = "bench-token-0123456789";

/// The KV REST gateway in front of `redis_url`.
pub(crate) fn start_gateway(redis_url: &str) -> Result<Background> {
    let config = kv_rest_gateway::GatewayConfig::new(redis_url, GATEWAY_TOKEN);
    Background::spawn("gateway", move |listener, stop| async move {
        kv_rest_gateway::serve(listener, config, async move {
            let _ = stop.await;
        })
        .await
        .map_err(|e| anyhow!("gateway: {e}"))
    })
}

/// The Redis servers of a run.
pub(crate) struct RedisServers {
    pub(crate) single: RedisServer,
    pub(crate) cluster: RedisCluster,
}

impl RedisServers {
    pub(crate) fn start() -> Result<Self> {
        let single = RedisServer::start().map_err(|e| anyhow!("redis server: {e}"))?;
        let cluster = RedisCluster::start(3).map_err(|e| anyhow!("redis cluster: {e}"))?;
        Ok(Self { single, cluster })
    }

    /// Stop every local server (dropping a fixture kills its process).
    pub(crate) fn stop(self) {
        drop(self.cluster);
        drop(self.single);
    }
}
