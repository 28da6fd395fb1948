//! Helpers of `bench/run.sh`, the load benchmark:
//!
//! * `floor`: the best any actix-web service can do here — a minimal server
//!   answering every GET with a fixed JSON body of a given size;
//! * `load`: fills a vault data directory with N valid tokens in large
//!   transactions (the same sealing as a store, much faster than N
//!   requests), so the read benchmark can run over 10,000 or 1,000,000;
//! * `chart`: draws throughput and p99 latency against connection count
//!   from the sweep's CSV as an SVG.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Load-benchmark helpers for bench/run.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a fixed JSON body of BODY_SIZE bytes to every GET.
    Floor {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8300")]
        bind: String,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 330)]
        body_size: usize,
    },
    /// Store COUNT tokens at prod/bench/p0 … `p<COUNT-1>` in DATA_DIR.
    Load {
        /// The vault's data directory (key file and database).
        #[arg(long)]
        data_dir: PathBuf,
        /// How many tokens.
        #[arg(long)]
        count: usize,
        /// Tokens per transaction.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Draw the connection sweep (CSV: series,connections,rps,p99_ms).
    Chart {
        /// The CSV file.
        #[arg(long)]
        csv: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Floor {
            bind,
            workers,
            body_size,
        } => floor(&bind, workers, body_size),
        Command::Load {
            data_dir,
            count,
            batch,
        } => load(data_dir, count, batch),
        Command::Chart { csv, out } => {
            let text = std::fs::read_to_string(csv)?;
            std::fs::write(out, chart::svg(&text)?)?;
            Ok(())
        }
    }
}

/// A JSON object of exactly `size` bytes (at least 16).
fn fixed_body(size: usize) -> String {
    let prefix = "{\"access_token\":\"";
    let suffix = "\"}";
    let fill = size.saturating_sub(prefix.len() + suffix.len()).max(1);
    format!("{prefix}{}{suffix}", "x".repeat(fill))
}

fn floor(bind: &str, workers: usize, body_size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let body = actix_web::web::Bytes::from(fixed_body(body_size));
    actix_web::rt::System::new().block_on(async move {
        actix_web::HttpServer::new(move || {
            let body = body.clone();
            actix_web::App::new().default_service(actix_web::web::to(move || {
                let body = body.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }))
        })
        .workers(workers)
        .bind(bind)?
        .run()
        .await
    })?;
    Ok(())
}

fn load(data_dir: PathBuf, count: usize, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    use vault_encryption_layer::{Envelope, LocalKeyProvider};
    use vault_secret_store::{SecretStore, SqliteStore};
    use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
    use vault_types::{Secret, SecretAddress, SystemClock};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&data_dir)?;
        let store = Arc::new(SqliteStore::open(&data_dir.join("vault.db")).await?);
        let keys = LocalKeyProvider::from_file(&data_dir.join("master.key"), true)?;
        let tokens = TokenManager::new(
            Arc::clone(&store) as Arc<dyn SecretStore>,
            Envelope::new(Arc::new(keys)),
            Arc::new(SystemClock),
        );
        tokens.load_audit_keys().await?;
        let ctx = RequestContext::new("bench-load", Some("bench".into()));
        let started = Instant::now();
        let mut done = 0;
        while done < count {
            let n = batch.min(count - done);
            let mut requests = Vec::with_capacity(n);
            for i in done..done + n {
                let mut data = TokenData::new(Secret::from(format!(
                    "xoxb-bench-{i:08}-0123456789abcdef0123456789abcdef"
                )));
                data.refresh_token = Some(Secret::from(format!("xoxe-refresh-{i:08}")));
                data.expires_in = Some(86_400 * 30);
                data.scopes = vec!["chat:write".into(), "users:read".into()];
                let address = SecretAddress::new("prod", "bench", &format!("p{i}"))?;
                requests.push(StoreRequest::new(address, data));
            }
            tokens.store_new_batch(&ctx, requests).await?;
            done += n;
            eprintln!("loaded {done}/{count}");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "loaded {count} tokens in {secs:.1} s ({:.0} per second)",
            count as f64 / secs.max(1e-9)
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

mod chart {
    //! A line chart as SVG, written by hand: two panels (requests per
    //! second, p99 latency) against connections on a log scale.

    use std::collections::BTreeMap;
    use std::fmt::Write;

    type Series = BTreeMap<String, Vec<(f64, f64, f64)>>;

    fn parse(csv: &str) -> Result<Series, String> {
        let mut series: Series = BTreeMap::new();
        for (n, line) in csv.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("series") {
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 4 {
                return Err(format!("line {}: expected 4 fields", n + 1));
            }
            let num = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("line {}: {s:?} is not a number", n + 1))
            };
            series.entry(f[0].trim().to_owned()).or_default().push((
                num(f[1])?,
                num(f[2])?,
                num(f[3])?,
            ));
        }
        if series.is_empty() {
            return Err("no data".into());
        }
        Ok(series)
    }

    const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

    /// The chart of `csv` (`series,connections,rps,p99_ms`).
    pub(crate) fn svg(csv: &str) -> Result<String, String> {
        let series = parse(csv)?;
        let (w, h, pad) = (920.0, 380.0, 60.0);
        let panel_w = (w - 3.0 * pad) / 2.0;
        let plot_h = h - 2.0 * pad;
        let conns: Vec<f64> = series.values().flatten().map(|p| p.0).collect();
        let (cmin, cmax) = conns
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), c| (a.min(*c), b.max(*c)));
        let x = |c: f64, left: f64| {
            let span = (cmax.ln() - cmin.ln()).max(1e-9);
            left + (c.ln() - cmin.ln()) / span * panel_w
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        for (panel, (title, pick)) in [("requests per second", 1usize), ("p99 latency (ms)", 2)]
            .into_iter()
            .enumerate()
        {
            let left = pad + panel as f64 * (panel_w + pad);
            let value = |p: &(f64, f64, f64)| if pick == 1 { p.1 } else { p.2 };
            let vmax = series
                .values()
                .flatten()
                .map(value)
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let y = |v: f64| pad + plot_h - v / vmax * plot_h;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{title}</text>",
                left + panel_w / 2.0,
                pad - 20.0
            );
            let _ = writeln!(
                out,
                "<rect x=\"{left}\" y=\"{pad}\" width=\"{panel_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>"
            );
            for i in 0..=4 {
                let v = vmax * f64::from(i) / 4.0;
                let _ = writeln!(
                    out,
                    "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
                    left - 4.0,
                    y(v) + 4.0,
                    v
                );
            }
            let mut ticks: Vec<f64> = conns.clone();
            ticks.sort_by(f64::total_cmp);
            ticks.dedup();
            for c in ticks {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                    x(c, left),
                    pad + plot_h + 16.0
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">connections</text>",
                left + panel_w / 2.0,
                pad + plot_h + 34.0
            );
            for (i, (name, points)) in series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let path: Vec<String> = points
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x(p.0, left), y(value(p))))
                    .collect();
                let _ = writeln!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                    path.join(" ")
                );
                for p in points {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                        x(p.0, left),
                        y(value(p))
                    );
                }
                if panel == 0 {
                    let _ = writeln!(
                        out,
                        "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
                        left + 8.0,
                        pad + 16.0 + 16.0 * i as f64
                    );
                }
            }
        }
        out.push_str("</svg>\n");
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn draws_each_series_in_both_panels() {
            let csv = "series,connections,rps,p99_ms\nfloor,8,1000,1.0\nfloor,64,3000,4.0\nread,8,800,1.5\nread,64,2000,6.0\n";
            let svg = svg(csv).expect("chart");
            assert!(svg.starts_with("<svg"));
            assert_eq!(svg.matches("<polyline").count(), 4);
            assert!(svg.contains(">floor<") && svg.contains(">read<"));
        }

        #[test]
        fn bad_input_is_an_error() {
            assert!(svg("").is_err());
            assert!(svg("floor,8,x,1").is_err());
            assert!(svg("floor,8,1").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_body_has_the_asked_size_and_is_json() {
        let body = fixed_body(330);
        assert_eq!(body.len(), 330);
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }

    #[test]
    fn load_fills_a_data_directory_the_server_can_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        load(dir.path().to_owned(), 25, 10).expect("load");
        assert!(dir.path().join("master.key").exists());
        assert!(dir.path().join("vault.db").exists());
    }
}
