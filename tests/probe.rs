//! `kiln probe` (the containers' HEALTHCHECK) against a stand-in server on 127.0.0.1 that answers
//! /health/live with 200 and /health/ready with the 503 envelope a loading or draining server
//! sends: exit codes, the URL it builds from KILN_PORT, and clear errors.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

/// Serves forever on a free port; returns the port.
fn stand_in_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/health/live" => ("200 OK", r#"{"status":"ok"}"#),
                "/health/ready" => (
                    "503 Service Unavailable",
                    r#"{"error":{"message":"model sd15 is loading","type":"server_error","param":null,"code":"not_ready"}}"#,
                ),
                "/moved/health/live" => ("302 Found", ""),
                _ => ("404 Not Found", ""),
            };
            let extra = if status.starts_with("302") {
                "Location: /health/live\r\n"
            } else {
                ""
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn probe(args: &[&str], port_env: Option<u16>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("probe").args(args).env("RUST_LOG", "warn");
    cmd.env_remove("KILN_PROBE_URL");
    match port_env {
        Some(p) => cmd.env("KILN_PORT", p.to_string()),
        None => cmd.env_remove("KILN_PORT"),
    };
    cmd.output().expect("kiln runs")
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn live_is_200_and_exits_0() {
    let port = stand_in_server();
    let url = format!("http://127.0.0.1:{port}");
    let o = probe(&["--url", &url, "live"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("/health/live: 200"), "{}", text(&o));
}

#[test]
fn not_ready_exits_1_and_says_why() {
    let port = stand_in_server();
    // The default check is `ready`; a trailing slash on the URL is fine.
    let url = format!("http://127.0.0.1:{port}/");
    let o = probe(&["--url", &url], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("/health/ready: 503") && t.contains("model sd15 is loading"),
        "{t}"
    );
}

#[test]
fn default_url_follows_kiln_port() {
    let port = stand_in_server();
    let o = probe(&["live"], Some(port));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("http://127.0.0.1:{port}/health/live")),
        "{}",
        text(&o)
    );
}

#[test]
fn redirects_are_not_followed() {
    let port = stand_in_server();
    let url = format!("http://127.0.0.1:{port}/moved");
    let o = probe(&["--url", &url, "live"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn nothing_listening_exits_1() {
    // A port that was free a moment ago: connection refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = probe(&["live", "--timeout-secs", "2"], Some(port));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no answer"), "{}", text(&o));
}

#[test]
fn bad_options_are_errors_naming_them() {
    let o = probe(&["--url", "ftp://127.0.0.1:1"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--url"), "{}", text(&o));
    let o = probe(&["started"], None);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("live") && text(&o).contains("ready"),
        "{}",
        text(&o)
    );
    let o = probe(&["--timeout-secs", "0"], None);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--timeout-secs"), "{}", text(&o));
}
