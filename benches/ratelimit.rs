//! Quick benchmark of the Coder client's keyed rate limiter (`cargo bench --bench ratelimit`):
//! the operator's load at N=5000 one-per-workspace, where every request's calls go to a path of
//! its own (`/api/v2/workspaces/{id}`), plus one shared path. Prints ns per `acquire`.

use std::time::{Duration, Instant};

use workspace_start_operator::coder::ratelimit::RateLimiter;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    for keys in [1usize, 5_000, 50_000] {
        let paths: Vec<String> = (0..keys)
            .map(|i| format!("/api/v2/workspaces/{:032x}", i))
            .collect();
        // Burst = per_minute / 10; stay within each path's burst so nothing waits.
        let limiter = RateLimiter::new(6_000_000);
        let rounds = (400_000 / keys).clamp(1, 20);
        let calls = rounds * keys;
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t0 = Instant::now();
            rt.block_on(async {
                for _ in 0..rounds {
                    for p in &paths {
                        limiter.acquire(p).await;
                    }
                }
            });
            best = best.min(t0.elapsed());
            std::thread::sleep(Duration::from_millis(1100)); // let a sweep run in the next pass
        }
        let per = best.as_nanos() / u128::try_from(calls).unwrap_or(1);
        println!("ratelimit: {keys} paths, {calls} acquires: {per} ns/acquire (best of 5)");
    }
}
