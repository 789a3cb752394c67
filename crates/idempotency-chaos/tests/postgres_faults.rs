//! The Postgres faults the `sql` backend injects, on a real local server: a pause freezes
//! every Postgres process (not only the postmaster), a `kill -9` of the postmaster and its
//! children loses no acknowledged commit with `synchronous_commit=on`, and the restarted server
//! on the same data directory and port has it (crash recovery from the WAL).

use std::time::Duration;

use idempotency_testkit::fixtures::PostgresServer;
use sqlx::Connection as _;

async fn connect(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_answers_nothing_and_a_killed_one_recovers_every_commit() {
    let mut server = tokio::task::spawn_blocking(|| {
        PostgresServer::start_local_with(&["synchronous_commit=on"])
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url().to_owned();
    let mut connection = connect(&url).await;
    sqlx::query("CREATE TABLE effects (id TEXT PRIMARY KEY, version BIGINT NOT NULL)")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query("INSERT INTO effects VALUES ('a', 1)")
        .execute(&mut connection)
        .await
        .unwrap();

    // Paused: the backend serving this open connection is stopped too, so a query on it
    // does not answer until the server is resumed.
    server.pause().unwrap();
    let frozen = tokio::time::timeout(
        Duration::from_millis(500),
        sqlx::query_as::<_, (i64,)>("SELECT version FROM effects WHERE id = 'a'")
            .fetch_one(&mut connection),
    )
    .await;
    assert!(frozen.is_err(), "a paused server answered: {frozen:?}");
    server.resume().unwrap();
    drop(connection);
    let mut connection = connect(&url).await;
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM effects WHERE id = 'a'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(version, 1);

    // An acknowledged commit, then kill -9 of every Postgres process.
    sqlx::query("UPDATE effects SET version = version + 1 WHERE id = 'a'")
        .execute(&mut connection)
        .await
        .unwrap();
    let postmaster = server.pid().unwrap();
    tokio::task::block_in_place(|| server.kill()).unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{postmaster}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{postmaster}/status"))
                .unwrap_or_default()
                .contains("zombie"),
        "the postmaster survived the kill"
    );
    let dead = sqlx::query("SELECT 1").execute(&mut connection).await;
    assert!(dead.is_err(), "a killed server answered");
    assert!(
        sqlx::PgConnection::connect(&url).await.is_err(),
        "a killed server accepted a connection"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    assert_eq!(server.url(), url, "same port after the restart");
    assert_ne!(server.pid(), Some(postmaster));
    let mut connection = connect(&url).await;
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM effects WHERE id = 'a'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(version, 2, "the acknowledged commit survived the kill");
}
