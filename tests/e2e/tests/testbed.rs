//! The kit against the real testbed services (`tests/testbed/up.sh redis mariadb opensearch`).
//! Each test uses its own database, key and index, so they run in parallel.

use std::collections::HashSet;

use migrate_e2e::datagen::{self, DataSetSpec};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::search;
use mysql_async::prelude::Queryable;

#[allow(clippy::unwrap_used)] // a test helper: a failure fails the test
async fn count_rows(url: &str, table: &str) -> u64 {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let n: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    n.unwrap()
}

/// A thousand articles land in a fresh database with their tags and authors, and the oracle
/// reads back the same blacklisted ids the generator recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_articles_load_into_a_fresh_database() {
    let env = TestEnv::load();
    env.require(&[Service::Mysql]).await;
    let name = unique_name("migrate_e2e_load");
    let db = datagen::create_database(&env.mysql_url, &name).await;
    let spec = DataSetSpec::default();
    let generated = datagen::load(&db, &spec).await;

    assert_eq!(generated.ids.len(), 1_000);
    assert_eq!(count_rows(&db, "article").await, 1_000);
    assert_eq!(count_rows(&db, "author").await, u64::from(datagen::AUTHORS));
    let data = datagen::DataSet::new(&spec);
    let tags: usize = (0..spec.articles).map(|i| data.article(i).tags.len()).sum();
    assert_eq!(count_rows(&db, "article_tag").await, tags as u64);

    let mut conn = mysql_async::Conn::from_url(db.as_str()).await.unwrap();
    let first = data.article(0);
    let row: Option<(String, String, String, String)> = conn
        .exec_first(
            "SELECT title, body, DATE_FORMAT(published_at, '%Y-%m-%d %H:%i:%s.%f'), CAST(score AS CHAR) FROM article WHERE id = ?",
            (first.id,),
        )
        .await
        .unwrap();
    let (title, body, published, score) = row.unwrap();
    assert_eq!(
        (title, body),
        (first.title, first.body),
        "Chinese text survives the round trip"
    );
    assert_eq!(&published[..23], first.published_at);
    assert_eq!(score, first.score);
    conn.disconnect().await.unwrap();

    assert_eq!(generated.blacklisted_ids.len(), 20, "2% of 1,000 articles");
    let expected = datagen::expected(&db, &generated, &["title", "body"]).await;
    assert_eq!(expected.blacklisted_ids, generated.blacklisted_ids);
    let all: HashSet<u64> = generated.ids.iter().copied().collect();
    assert_eq!(expected.indexed_ids, &all - &generated.blacklisted_ids);
    assert!(
        expected.counts.len() > 1_000,
        "{} keywords matched",
        expected.counts.len()
    );
    assert!(expected.counts.keys().all(|k| k.starts_with("topics:")));

    datagen::drop_database(&env.mysql_url, &name).await;
    let mut conn = mysql_async::Conn::from_url(env.mysql_url.as_str())
        .await
        .unwrap();
    let left: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (&name,),
        )
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    assert_eq!(left, None, "the database is dropped");
}

/// Ids are LPUSHed in order, so the right end of the list (where BLMOVE takes) is the first id.
#[tokio::test]
async fn ids_are_enqueued_first_id_first() {
    let env = TestEnv::load();
    env.require(&[Service::Redis]).await;
    let key = unique_name("e2e_enqueue");
    let ids: Vec<u64> = (0..120_000).map(|i| datagen::FIRST_ID + i).collect();
    datagen::enqueue(&env.redis_url, &key, &ids).await;

    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: u64 = redis::cmd("LLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let right: Vec<u64> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(-1)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let left: Vec<u64> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 120_000);
    assert_eq!(right, [ids[0]]);
    assert_eq!(left, [ids[119_999]]);
}

/// Count and id listing see every document, across several scroll pages.
#[tokio::test]
async fn the_search_helpers_count_and_list_every_document() {
    let env = TestEnv::load();
    env.require(&[Service::Es]).await;
    let index = unique_name("e2e_search");
    let mut body = String::new();
    for id in 0..12_000u64 {
        body.push_str(&format!(
            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"{id}\"}}}}\n{{\"n\":{id}}}\n"
        ));
    }
    let response = reqwest::Client::new()
        .post(format!("{}/_bulk", env.es_url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    assert_eq!(search::count(&env.es_url, &index).await, 12_000);
    let ids = search::ids(&env.es_url, &index).await;
    assert_eq!(ids, (0..12_000).collect::<HashSet<u64>>());
    let doc = search::get_source(&env.es_url, &index, "7").await.unwrap();
    assert_eq!(doc["n"], 7);
    assert!(
        search::get_source(&env.es_url, &index, "nope")
            .await
            .is_none()
    );

    search::delete_index(&env.es_url, &index).await;
    assert_eq!(search::count(&env.es_url, &index).await, 0);
    assert!(search::ids(&env.es_url, &index).await.is_empty());
}
