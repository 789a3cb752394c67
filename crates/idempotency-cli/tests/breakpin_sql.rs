//! breakpin: the CLI's SQL walk on a Postgres records table in a schema of its own, whose name
//! needs quotes, found through a hostile `search_path` on the CLI's connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{json, run, seed_many, store_key};
use idempotency::IdempotencyStore as _;
use idempotency::sql::PostgresStore;
use idempotency::sql::sqlx;
use idempotency_testkit::fixtures::{HOW_TO_GET_POSTGRES, PostgresServer};

/// The records table in the schema `Odd"Sch.ema` (capitals, a `"`, a dot), which the CLI's
/// connection finds through `search_path = evil, pg_catalog, "Odd""Sch.ema"`; `evil` holds a
/// `count(*)` aggregate that starts at a million and an `=` on text that is always true. The
/// dry run and the purge of one scope count and delete its 5 records only, `stats` counts the
/// 8 records, and `doctor` reports the table's 8 rows. Before, `doctor` counted its rows with
/// a bare `COUNT(*)`, which the search path resolved to evil's aggregate: "1000008 rows".
#[tokio::test(flavor = "multi_thread")]
async fn the_sql_walk_on_an_odd_schema_under_a_hostile_search_path() {
    let server =
        PostgresServer::start_local().unwrap_or_else(|e| panic!("{e}: {HOW_TO_GET_POSTGRES}"));
    let pool = sqlx::postgres::PgPool::connect(server.url()).await.unwrap();
    for statement in [
        "CREATE SCHEMA evil",
        "CREATE SCHEMA \"Odd\"\"Sch.ema\"",
        "CREATE AGGREGATE evil.count(*) (SFUNC = int8inc, STYPE = int8, INITCOND = '1000000')",
        "CREATE FUNCTION evil.always(text, text) RETURNS boolean \
         LANGUAGE sql IMMUTABLE AS 'SELECT true'",
        "CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let store = PostgresStore::builder(pool)
        .table("Odd\"Sch.ema.idempotency_records")
        .migrate()
        .await;
    assert!(store.is_err(), "a configured schema is a plain identifier");
    let odd = format!(
        "{}?options=-c%20search_path%3D%22Odd%22%22Sch.ema%22",
        server.url()
    );
    let store = PostgresStore::builder(sqlx::postgres::PgPool::connect(&odd).await.unwrap())
        .migrate()
        .await
        .unwrap();
    assert_eq!(
        store.quoted_table(),
        "\"Odd\"\"Sch.ema\".\"idempotency_records\""
    );
    seed_many(&store, "alice", 5).await;
    seed_many(&store, "bob", 3).await;

    let hostile = format!(
        "{}?options=-c%20search_path%3Devil%2Cpg_catalog%2C%22Odd%22%22Sch.ema%22",
        server.url()
    );
    let env = [
        ("IDEMPOTENCY_STORE", "sql"),
        ("DATABASE_URL", hostile.as_str()),
    ];
    let doctor = run(&env, &["doctor"]);
    assert_eq!(doctor.code, 0, "{}", doctor.all());
    assert!(doctor.stdout.contains(" 8 rows"), "{}", doctor.stdout);
    let stats = json(&run(&env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 3 + 2, "{stats}");
    assert_eq!(stats["completed"], 2 + 1, "{stats}");
    let dry = run(&env, &["purge", "--scope", "alice"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(dry.stdout.contains("5 records"), "{}", dry.stdout);
    let purged = run(&env, &["purge", "--scope", "alice", "--yes"]);
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 5 records"),
        "{}",
        purged.stdout
    );
    for i in 0..3 {
        assert!(
            store
                .get(&store_key("bob", &format!("k{i}")))
                .await
                .unwrap()
                .is_some(),
            "bob's record k{i} survives"
        );
    }
    let inspected = run(&env, &["inspect", "bob", "k1", "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    assert_eq!(json(&inspected)["state"], "completed");
}
