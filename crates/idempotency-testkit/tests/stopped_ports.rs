//! A stopped (killed) fixture server keeps its port: connects are refused and no other socket
//! binds it until `restart`, which then binds it again. Before, the port was free while the
//! server was down, and another test's server could take it: the test then talked to that
//! server, and the restart failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};

use idempotency_testkit::fixtures::{PostgresServer, RedisServer};

/// Connects to the port are refused.
fn assert_refused(port: u16) {
    let connect = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(connect.kind(), ErrorKind::ConnectionRefused, "{connect}");
}

/// The port is held: refused to connects, and no other socket binds it (std's listener even
/// sets `SO_REUSEADDR`). That holds when no connection was open at the stop; with one, the
/// server side's `TIME_WAIT` makes the reservation use `SO_REUSEADDR`, and only the kernel's
/// own choices (`bind(…:0)`) are then kept off the port.
fn assert_held(port: u16) {
    assert_refused(port);
    match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(_) => panic!("port {port} of a stopped server was free for another server"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}"),
    }
}

#[test]
fn a_stopped_redis_server_holds_its_port_until_restart() {
    let mut server =
        RedisServer::start_local().expect("redis-server (apt-get install redis-server)");
    let port = server.port();
    server.stop().unwrap();
    assert_held(port);
    // Stopping again keeps the reservation.
    server.stop().unwrap();
    assert_held(port);
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    TcpStream::connect(("127.0.0.1", port)).expect("the restarted server answers");
    // Killed with a connection open: still refused, and the restart binds the port again.
    let open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    server.stop().unwrap();
    assert_refused(port);
    drop(open);
    server.restart().unwrap();
    TcpStream::connect(("127.0.0.1", port)).expect("the restarted server answers");
}

#[test]
fn a_killed_postgres_server_holds_its_port_until_restart() {
    let mut server = PostgresServer::start_local().expect("postgres (apt-get install postgresql)");
    let port = server.port();
    server.kill().unwrap();
    assert_held(port);
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    let open = TcpStream::connect(("127.0.0.1", port)).expect("the restarted server answers");
    server.kill().unwrap();
    assert_refused(port);
    drop(open);
    server.restart().unwrap();
    TcpStream::connect(("127.0.0.1", port)).expect("the restarted server answers");
}
