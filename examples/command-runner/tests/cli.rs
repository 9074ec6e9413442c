//! The binary as a user (or a script) runs it: `--help` explains itself, `--port 0 --ws-port 0`
//! and the PORT / WS_PORT variables both serve and print the listening line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_command-runner");
/// A debug build on a busy machine can be slow to start.
const WAIT: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run command-runner")
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
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("PORT")
        .env_remove("WS_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
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

/// Asserts `line` is the listening line with real ports, and that both accept connections.
fn assert_listening(line: &str) {
    let rest = line
        .strip_prefix("command-runner: plexus on ")
        .unwrap_or_else(|| panic!("not the listening line: {line:?}"));
    let (plexus, page) = rest.split_once(", open http://").unwrap();
    for addr in [plexus, page.trim_end_matches('/')] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert_ne!(addr.port(), 0);
        std::net::TcpStream::connect_timeout(&addr, WAIT).expect("the printed address accepts connections");
    }
}

#[test]
fn help_explains_the_options_and_exits_0() {
    let output = run(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in ["--port <PORT>", "--ws-port <PORT>", "WS_PORT", "Usage: command-runner"] {
        assert!(help.contains(expected), "{expected:?} missing from:\n{help}");
    }
}

#[test]
fn port_0_serves_and_prints_the_listening_line() {
    let (_server, line) = first_line(&["--port", "0", "--ws-port", "0"]);
    assert_listening(&line);
}

#[test]
fn the_port_variables_still_work() {
    let mut child = Command::new(BIN)
        .env("PORT", "0")
        .env("WS_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    assert_listening(rx.recv_timeout(WAIT).expect("a line on stdout in time").trim_end());
}
