//! Measures how fast a data set loads into the testbed's MariaDB and how fast the oracle
//! recomputes its expectations. Prints numbers; asserts nothing about speed.
//!
//! ```text
//! cargo run --release -p migrate-e2e --example load_speed -- [ARTICLES]   # default 100000
//! ```

use std::time::Instant;

use migrate_e2e::datagen::{self, DataSetSpec};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use mysql_async::prelude::Queryable;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let articles: u64 = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let env = TestEnv::load();
    env.require(&[Service::Mysql]).await;
    let name = unique_name("migrate_load_speed");
    let db = datagen::create_database(&env.mysql_url, &name).await;
    let spec = DataSetSpec {
        articles,
        ..DataSetSpec::default()
    };

    let t = Instant::now();
    let data = datagen::DataSet::new(&spec);
    let chars: usize = (0..articles)
        .map(|i| data.article(i).body.chars().count())
        .sum();
    let generate = t.elapsed();
    println!(
        "generate (no database): {articles} articles, {chars} body characters, in {:.2} s",
        generate.as_secs_f64()
    );

    let t = Instant::now();
    let generated = datagen::load(&db, &spec).await;
    let load = t.elapsed();
    println!(
        "load: {articles} articles in {:.2} s ({:.0} articles/s), {} blacklisted",
        load.as_secs_f64(),
        articles as f64 / load.as_secs_f64(),
        generated.blacklisted_ids.len()
    );

    let t = Instant::now();
    let expected = datagen::expected(&db, &generated, &["title", "body"]).await;
    let oracle = t.elapsed();
    println!(
        "expected: {} indexed, {} distinct keywords matched, {} matches, in {:.2} s",
        expected.indexed_ids.len(),
        expected.counts.len(),
        expected.counts.values().sum::<u64>(),
        oracle.as_secs_f64()
    );

    let mut conn = mysql_async::Conn::from_url(env.mysql_url.as_str()).await?;
    conn.query_drop(format!("DROP DATABASE `{name}`")).await?;
    conn.disconnect().await?;
    Ok(())
}
