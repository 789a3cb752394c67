//! [`RefusedPort`]: a port on 127.0.0.1 where nothing listens, held so no other server takes it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;

/// A TCP port on 127.0.0.1 where nothing listens, reserved for the value's life.
///
/// The value holds a TCP socket **bound** to the port but never `listen()`ing, without
/// `SO_REUSEADDR`. While it lives:
/// - a connect to [`addr`](Self::addr) is refused at once (`ECONNREFUSED` on Linux: the kernel
///   answers a SYN to a bound, non-listening port with a reset);
/// - no other socket can bind the port (`EADDRINUSE`, with or without `SO_REUSEADDR`), and
///   the kernel never hands it out for a `bind(…:0)` (the way every test server and fixture
///   picks its port) nor as the source port of an outgoing connection.
///
/// That is what a test needs for "a store (or endpoint) that is down". The old way, binding a
/// listener on port 0 and dropping it, freed the port at once: any server started meanwhile on
/// an ephemeral port (another test of the same binary, another process) could take it, and the
/// test then talked to that server instead of getting a refusal.
///
/// ```
/// use idempotency_testkit::RefusedPort;
///
/// let down = RefusedPort::new();
/// let url = format!("redis://{}", down.addr());
/// let refused = std::net::TcpStream::connect(down.addr()).unwrap_err();
/// assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
/// # let _ = url;
/// ```
///
/// A test that starts a server on the port later (a store down at start-up, then up) holds the
/// value until then:
/// - a server in this process takes the port with [`listen`](Self::listen): the reserved
///   socket itself starts listening, so the port is never free in between;
/// - a server in another process (a `redis-server` child) needs the port free: call
///   [`release`](Self::release) right before it binds, and retry its start on `AddrInUse`.
///   Only the moment between the two is unprotected (a bind on port 0 elsewhere could take the
///   port then, as with any free-port probe); the server's own bind then fails, which is loud,
///   rather than the test silently talking to another server.
#[derive(Debug)]
pub struct RefusedPort {
    socket: TcpSocket,
    addr: SocketAddr,
}

impl RefusedPort {
    /// Reserve a fresh port (127.0.0.1:0, chosen by the kernel).
    ///
    /// # Panics
    /// When no socket can be bound on 127.0.0.1 (test code: there is nothing to recover).
    pub fn new() -> Self {
        Self::bind(0, false).expect("binding a socket on 127.0.0.1:0")
    }

    /// Reserve a given port (without `SO_REUSEADDR`), e.g. the port of a server a test
    /// stopped on purpose.
    ///
    /// # Errors
    /// `AddrInUse` while any socket holds the port: a server, and also the `TIME_WAIT` traces of
    /// connections its server side closed (for about a minute). See
    /// [`reserve_after_stop`](Self::reserve_after_stop) for a stopped server's port.
    pub fn reserve(port: u16) -> io::Result<Self> {
        Self::bind(port, false)
    }

    /// Reserve the port of a server that was just stopped or killed: as
    /// [`reserve`](Self::reserve) when possible; when only the `TIME_WAIT` traces of the
    /// server's connections stand in the way, the socket is bound with `SO_REUSEADDR` instead.
    /// Connects are refused all the same and the kernel still never hands the port out for a
    /// `bind(…:0)`; only a socket that binds this very port with `SO_REUSEADDR` (a server told
    /// to use it, e.g. the stopped server restarted) could then take it.
    ///
    /// # Errors
    /// When even that fails: something listens on the port again.
    pub fn reserve_after_stop(port: u16) -> io::Result<Self> {
        match Self::bind(port, false) {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => Self::bind(port, true),
            other => other,
        }
    }

    fn bind(port: u16, reuse_address: bool) -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        // Explicitly off (the default of a new socket): with it, another `SO_REUSEADDR` socket
        // could bind, and even listen on, the port while this one holds it.
        socket.set_reuseaddr(reuse_address)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        let addr = socket.local_addr()?;
        Ok(Self { socket, addr })
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Free the port, for a server in another process that the test starts on it **right
    /// after** this call (the port is returned). Between this call and the server's bind the
    /// port is unprotected: keep that moment short (release, then bind, with nothing in
    /// between that waits). For a server in this process, [`listen`](Self::listen) has no
    /// such moment.
    ///
    /// The port may not be free at once: a child process that another thread of this process
    /// is spawning at that moment holds a copy of every socket of the process, this one
    /// included, until it `exec`s (sockets are close-on-exec, so only that long: microseconds
    /// to a few milliseconds). A bind right after `release` can fail with `AddrInUse` then;
    /// whatever binds the port should retry briefly ([`retry_while_in_use`]; the fixtures'
    /// `restart` does). The same holds for any socket a test closes, a listener's included.
    /// A child process that binds the port should be started with [`start_on_free_port`].
    pub fn release(self) -> u16 {
        let port = self.port();
        drop(self.socket);
        port
    }

    /// Start listening on the reserved port, for a server in this process (an `axum::serve`
    /// started late, say). The reserved socket itself becomes the listener, so the port is
    /// never free between the reservation and the server: no other socket can take it, and
    /// no other thread's process spawn can keep it busy (see [`release`](Self::release)).
    ///
    /// `backlog` is `listen(2)`'s: the most connections the kernel queues before the server
    /// accepts them.
    ///
    /// # Errors
    /// As `listen(2)` (it does not fail on a socket bound as this one is, short of resource
    /// exhaustion).
    ///
    /// # Panics
    /// When called outside a Tokio runtime with IO enabled (the listener registers with its
    /// reactor), as [`tokio::net::TcpSocket::listen`].
    pub fn listen(self, backlog: u32) -> io::Result<tokio::net::TcpListener> {
        self.socket.listen(backlog)
    }
}

/// Run `op` again while it fails with `AddrInUse`, every millisecond for at most 5 s: for a
/// bind (or [`RefusedPort::reserve`]) of a port this process just freed, which stays busy
/// while a child process that another thread is spawning holds its copy of the socket, until
/// that child `exec`s (see [`RefusedPort::release`]). Any other error, or a port still busy
/// after 5 s (another socket really holds it), is returned.
///
/// ```
/// use idempotency_testkit::{RefusedPort, retry_while_in_use};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let port = listener.local_addr().unwrap().port();
/// drop(listener); // the server goes away; its port is held so no other server takes it
/// let down = retry_while_in_use(|| RefusedPort::reserve_after_stop(port)).unwrap();
/// # drop(down);
/// ```
///
/// # Errors
/// The last error of `op`.
pub fn retry_while_in_use<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match op() {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// Start a server **in another process** on a fresh port: `start(port)` gets a port that
/// was reserved until right before the call; when it fails (its server could not bind the
/// port: another socket took it in the moment between the release and the child's bind, or
/// holds it a while, see [`RefusedPort::release`]), it is called again with another fresh
/// port, up to `attempts` times in all. Returns the first success, or the last error.
///
/// For a server in this process use [`RefusedPort::listen`], which has no such moment. For a
/// restart on the same port (clients already know it), retry `start` on that port instead.
///
/// `start` should return an error only for a failure to bind (say, the child exited with
/// "address in use"), and panic on anything else, which a new port would not cure.
///
/// # Errors
/// The last error of `start`, after `attempts` failures.
///
/// # Panics
/// When `attempts` is 0.
pub fn start_on_free_port<T, E>(
    attempts: u32,
    mut start: impl FnMut(u16) -> Result<T, E>,
) -> Result<T, E> {
    assert!(attempts > 0, "start_on_free_port: no attempt allowed");
    let mut attempt = 1;
    loop {
        match start(RefusedPort::new().release()) {
            Err(_) if attempt < attempts => attempt += 1,
            other => return other,
        }
    }
}

impl Default for RefusedPort {
    /// [`RefusedPort::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{RefusedPort, retry_while_in_use};

    #[test]
    fn a_connect_is_refused() {
        let port = RefusedPort::new();
        assert_ne!(port.port(), 0);
        assert_eq!(port.addr().ip(), std::net::Ipv4Addr::LOCALHOST);
        for _ in 0..3 {
            let error = TcpStream::connect(port.addr()).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        }
    }

    #[test]
    fn no_other_socket_binds_the_port_while_it_is_held() {
        let port = RefusedPort::new();
        // std's listener sets SO_REUSEADDR on Unix: refused all the same.
        let error = TcpListener::bind(port.addr()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
        let error = RefusedPort::reserve(port.port()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let error = socket.bind(port.addr()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    }

    #[test]
    fn ephemeral_binds_never_get_the_port() {
        let held: Vec<RefusedPort> = (0..64).map(|_| RefusedPort::new()).collect();
        let ports: std::collections::HashSet<u16> = held.iter().map(RefusedPort::port).collect();
        assert_eq!(ports.len(), held.len(), "two reservations share a port");
        for _ in 0..2000 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert!(
                !ports.contains(&port),
                "bind(0) handed out reserved port {port}"
            );
        }
    }

    #[test]
    fn a_server_binds_the_port_after_release() {
        let reserved = RefusedPort::new();
        let addr = reserved.addr();
        let port = reserved.release();
        assert_eq!(port, addr.port());
        let listener = retry_while_in_use(|| TcpListener::bind(addr)).unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        drop(listener);
        // And reserved again once the server is gone.
        let again = retry_while_in_use(|| RefusedPort::reserve(port)).unwrap();
        assert_eq!(again.port(), port);
        assert_eq!(
            TcpStream::connect(addr).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
    }

    /// Another thread spawning child processes all along (as the fixtures do when they start
    /// servers, in the same test binary): a closed socket's port is busy for a moment while a
    /// child holds its copy. CI once failed `a_server_binds_the_port_after_release` so (an
    /// immediate `reserve` after the listener's drop: `AddrInUse`, 17 runs in 100 of this
    /// crate's tests). `listen` never frees the port; a release is bindable again within the
    /// retry.
    #[test]
    fn reservations_hold_while_another_thread_spawns_processes() {
        let stop = Arc::new(AtomicBool::new(false));
        let spawner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spawned = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    // `true(1)`, or anything that execs: only the fork-to-exec moment matters.
                    let _ = std::process::Command::new("true").status();
                    spawned += 1;
                }
                spawned
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        for _ in 0..200 {
            // In-process server: the reserved socket listens, an accept is served.
            let reserved = RefusedPort::new();
            let addr = reserved.addr();
            runtime.block_on(async {
                let listener = reserved.listen(16).unwrap();
                assert_eq!(listener.local_addr().unwrap(), addr);
                let (connected, accepted) =
                    tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
                connected.unwrap();
                assert_eq!(accepted.unwrap().0.local_addr().unwrap(), addr);
            });
            // Released, then bound (retrying a busy moment), then reserved again.
            let reserved = RefusedPort::new();
            let port = reserved.release();
            let listener = retry_while_in_use(|| TcpListener::bind(("127.0.0.1", port))).unwrap();
            drop(listener);
            let again = retry_while_in_use(|| RefusedPort::reserve(port)).unwrap();
            assert_eq!(
                TcpStream::connect(again.addr()).unwrap_err().kind(),
                ErrorKind::ConnectionRefused
            );
        }
        stop.store(true, Ordering::Relaxed);
        let spawned = spawner.join().unwrap();
        assert!(spawned > 0, "the spawning thread never ran");
    }

    /// A start that fails (its port was taken meanwhile) is retried on another fresh port;
    /// the last failure is returned once the attempts are spent.
    #[test]
    fn a_start_on_a_taken_port_is_retried_on_another() {
        let mut thieves = Vec::new();
        let mut ports = Vec::new();
        let started = super::start_on_free_port(3, |port| {
            ports.push(port);
            if ports.len() < 3 {
                // Another server takes the port before the child binds it.
                thieves.push(TcpListener::bind(("127.0.0.1", port)).unwrap());
            }
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => Ok(listener),
                Err(error) => Err(error.kind()),
            }
        })
        .unwrap();
        assert_eq!(ports.len(), 3);
        assert_eq!(started.local_addr().unwrap().port(), ports[2]);
        assert!(ports[2] != ports[0] && ports[2] != ports[1]);
        let mut calls = 0;
        let failed = super::start_on_free_port(2, |_| -> Result<(), u32> {
            calls += 1;
            Err(calls)
        });
        assert_eq!(failed, Err(2));
    }

    #[test]
    fn a_stopped_servers_port_is_reserved_despite_its_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // The server side closes first, as a killed server's kernel does: TIME_WAIT on its port.
        drop(accepted);
        drop(listener);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The strict reservation is refused (the server side's TIME_WAIT holds the port)...
        let strict = RefusedPort::reserve(addr.port()).unwrap_err();
        assert_eq!(strict.kind(), ErrorKind::AddrInUse, "{strict}");
        // ...the one after a stop is not.
        let reserved = retry_while_in_use(|| RefusedPort::reserve_after_stop(addr.port())).unwrap();
        assert_eq!(
            TcpStream::connect(addr).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
        // Not handed out by the kernel meanwhile.
        for _ in 0..2000 {
            let other = TcpListener::bind("127.0.0.1:0").unwrap();
            assert_ne!(other.local_addr().unwrap().port(), reserved.port());
        }
        // The server restarts on it once released.
        reserved.release();
        let _restarted = retry_while_in_use(|| TcpListener::bind(addr)).unwrap();
    }
}
