//! Sends a bounded number of `/segment` requests with title-sized texts to a running service
//! and prints the throughput and latency. Prints numbers; asserts nothing.
//!
//! ```text
//! cargo run --release -p migrate-testbed-nlp --example nlp_load -- [URL] [REQUESTS] [CONCURRENCY]
//! ```

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8090".to_owned());
    let requests: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let titles = [
        "国务院召开常务会议部署稳定经济增长措施",
        "我来到北京清华大学参加人工智能研讨会",
        "新能源汽车销量连续三个月保持增长",
        "足球联赛第十轮比赛今晚在上海举行",
    ];
    let client = reqwest::Client::new();
    let started = Instant::now();
    let per_task = requests / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (client, url) = (client.clone(), format!("{url}/segment"));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let text = titles[(t + i) % titles.len()];
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .json(&serde_json::json!({ "text": text }))
                        .send()
                        .await?;
                    response.error_for_status()?.bytes().await?;
                    latencies.push(sent.elapsed());
                }
                Ok::<_, reqwest::Error>(latencies)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} requests, concurrency {concurrency}: {:.0} req/s, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
