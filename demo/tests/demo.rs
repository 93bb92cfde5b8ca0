//! The main job's library entry point on a reduced configuration: a tiny model, two
//! receiving nodes plus the source, short (fast) loopback links, the bundled speech sample.
//! Needs neither root nor espeak-ng.

use std::path::PathBuf;

use store_demo::demo::{self, Audio, Case, DemoConfig, Method, report};

#[test]
fn reduced_demo_completes_every_case_with_equal_digests() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DemoConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_store-demo")));
    cfg.preset = "tiny".into();
    cfg.receivers = 2;
    cfg.n_values = vec![1, 2];
    cfg.k = 2;
    cfg.rate_mbit = 100;
    cfg.report_dir = dir.path().join("report");
    // The no-espeak path, wherever the test runs.
    cfg.audio = Audio::Bundled;
    cfg.progress = false;
    let mut lines = Vec::new();
    let r = demo::run(&cfg, |l| lines.push(l)).unwrap();
    let table = report::table(&r);
    println!("{}\n{table}\n{}", lines.join("\n"), report::targets_text(&r));

    // Every case, every method, in the table.
    let expected = [
        (Case::Local, Method::S3KDownloads, 2),
        (Case::Local, Method::StoreSharedCopy, 2),
        (Case::One, Method::StoreReplication, 1),
        (Case::One, Method::S3Download, 1),
        (Case::One, Method::CooperativeS3, 1),
        (Case::Nodes, Method::FanOut, 2),
        (Case::Nodes, Method::Swarm, 2),
        (Case::Nodes, Method::S3NDownloads, 2),
        (Case::Nodes, Method::CooperativeS3, 2),
        (Case::Runner, Method::RunnerStore, 1),
        (Case::Runner, Method::RunnerS3, 1),
    ];
    for (case, method, n) in expected {
        let row = r.row(case, method, n).unwrap_or_else(|| panic!("no row {case:?} {method:?} {n}"));
        assert!(row.all_ok, "{case:?} {method:?}: {row:?}");
        assert_eq!(row.consumers.len(), if case == Case::Runner { 1 } else { n }, "{row:?}");
        assert!(row.consumers.iter().all(|c| c.digest_ok && c.error.is_none() && c.seconds > 0.0), "{row:?}");
        assert!(row.seconds.is_finite() && row.seconds > 0.0 && row.x_bound.is_finite(), "{row:?}");
        assert!((row.s_over_b - r.s_over_b).abs() < 1e-12);
        assert!(table.contains(method.label()), "{method:?} missing from the table");
    }
    assert_eq!(r.rows.len(), expected.len(), "{:?}", r.rows);
    assert!(r.missing.is_empty(), "{:?}", r.missing);
    assert!(
        r.row(Case::Local, Method::StoreSharedCopy, 2)
            .and_then(|row| row.note.as_deref())
            .is_some_and(|n| n.contains("share the same pages")),
        "k consumers must map one copy"
    );
    // The S/B bound is the weights over the link rate.
    let s_over_b = r.model.weights_bytes as f64 * 8.0 / 100e6;
    assert!((r.s_over_b - s_over_b).abs() < 1e-9);
    assert!(r.model.random_weights);

    // The source's digest is the BLAKE3 of the weights file's bytes: the demo generated the
    // tiny model with seed 1, and a seed always gives the same bytes.
    let model = dir.path().join("model-again");
    s2t_runner::random::generate(&s2t_runner::Speech2TextConfig::preset(s2t_runner::Preset::Tiny), &model, 1).unwrap();
    let file_digest = store_tests::verify::file_blake3(&model.join("model.safetensors")).unwrap();
    assert_eq!(r.model.digest, file_digest);

    // The runner ran both ways on the bundled sample and agreed with itself.
    assert_eq!(r.runner.len(), 2);
    assert!(r.transcripts_equal);
    assert!(r.audio.starts_with("bundled"), "{}", r.audio);
    for run in &r.runner {
        assert_eq!(run.report["weight_bytes"].as_u64(), Some(r.model.weights_bytes));
        // The BLAKE3 of the weight bytes the runner held (store mapping, S3 download).
        assert_eq!(run.report["weights_blake3"].as_str(), Some(r.model.digest.as_str()), "{:?}", run.method);
        assert!(run.report["audio_seconds"].as_f64().is_some_and(|s| s > 1.0), "{}", run.report);
    }
    assert!(!r.targets.is_empty());
    assert!(
        r.targets.iter().any(|t| t.target.starts_with("every case completed") && t.target.contains("BLAKE3") && t.met)
    );

    // The report directory: JSON that round-trips, a markdown summary with the table, and
    // the charts it links (when this machine has a font to draw them with).
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.report_dir.join(report::JSON)).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(expected.len()));
    assert_eq!(json["network"], "loopback");
    let summary = std::fs::read_to_string(cfg.report_dir.join(report::SUMMARY)).unwrap();
    assert!(
        summary.contains("| case | method | N/k | time | MB/s each | S/B | x S/B | from S3 | BLAKE3 of mapped bytes |"),
        "{summary}"
    );
    assert!(summary.contains("S/B ="), "{summary}");
    for chart in [report::TIME_CHART, report::THROUGHPUT_CHART] {
        if summary.contains(chart) {
            let png = std::fs::read(cfg.report_dir.join(chart)).unwrap();
            assert!(png.starts_with(b"\x89PNG"), "{chart} is not a PNG");
        }
    }
    assert!(cfg.report_dir.join("logs").is_dir());
}
