//! The binary as a user (or a script) runs it: `--help` explains itself, `--port 0` and a bare
//! port both serve and print the listening line, and a bad port is a usage error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_todos-example");
/// A debug build on a busy machine can be slow to start.
const WAIT: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run todos-example")
}

/// Kills the server when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` and returns its first stdout line, which must come within WAIT.
fn first_line(args: &[&str]) -> (Running, String) {
    let mut child =
        Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("a line on stdout in time");
    (running, line.trim_end().to_owned())
}

/// Asserts `line` is the listening line with a real port, and that the port accepts connections.
fn assert_listening(line: &str) {
    let addr = line
        .strip_prefix("todos listening on ")
        .unwrap_or_else(|| panic!("not the listening line: {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);
    std::net::TcpStream::connect_timeout(&addr, WAIT).expect("the printed address accepts connections");
}

#[test]
fn help_explains_the_options_and_exits_0() {
    let output = run(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in ["--port <PORT>", "--tags", "PLEXUS_TAGS", "Usage: todos-example"] {
        assert!(help.contains(expected), "{expected:?} missing from:\n{help}");
    }
}

#[test]
fn port_0_serves_and_prints_the_listening_line() {
    let (_server, line) = first_line(&["--port", "0"]);
    assert_listening(&line);
}

#[test]
fn a_bare_port_still_works_for_scripts() {
    let (_server, line) = first_line(&["0"]);
    assert_listening(&line);
}

#[test]
fn a_bad_port_is_a_usage_error_not_a_parse_failure() {
    let output = run(&["--port", "x"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("invalid value 'x'") && stderr.contains("--help"), "{stderr}");
}
