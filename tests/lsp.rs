//! `xpolc lsp` driven as an editor drives it: a real client session over
//! stdio with JSON-RPC and Content-Length framing. Every wait is bounded
//! (a server that stops answering fails the test instead of hanging it),
//! and the server is killed if the test fails half-way.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one answer may take: generous, since the machine is shared
/// and debug builds are slow; it bounds a hang, it measures nothing.
const PATIENCE: Duration = Duration::from_secs(60);

struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    messages: Receiver<Value>,
    /// Messages read while waiting for another one.
    pending: VecDeque<Value>,
    next_id: i64,
}

impl Client {
    /// A server past the handshake (`initialize`, `initialized`), with
    /// its answer to `initialize`.
    fn initialized() -> (Client, Value) {
        let mut client = Client::start();
        let init = client.request("initialize", json!({ "processId": null, "rootUri": null, "capabilities": {} }));
        client.notify("initialized", json!({}));
        (client, init)
    }

    /// Opens document `uri` with `text` (version 1).
    fn open(&mut self, uri: &str, text: &str) {
        self.notify("textDocument/didOpen", json!({ "textDocument": { "uri": uri, "languageId": "xpol", "version": 1, "text": text } }));
    }

    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xpolc"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start xpolc lsp");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, messages) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(msg) = read_message(&mut reader) {
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        Client { child, stdin, messages, pending: VecDeque::new(), next_id: 1 }
    }

    fn send(&mut self, msg: Value) {
        let body = serde_json::to_string(&msg).unwrap();
        let stdin = self.stdin.as_mut().expect("stdin open");
        write!(stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request and returns its result (panics on an error response).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let resp = self.wait_for(|m| m.get("id") == Some(&json!(id)) && m.get("method").is_none(), method);
        assert!(resp.get("error").is_none(), "{method} failed: {resp}");
        resp["result"].clone()
    }

    /// The first message (already read or still to come) that `want` accepts.
    fn wait_for(&mut self, want: impl Fn(&Value) -> bool, what: &str) -> Value {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if want(&m) => return m,
                Ok(m) => self.pending.push_back(m),
                Err(RecvTimeoutError::Timeout) => panic!("no {what} from the server within {PATIENCE:?}; got {:?}", self.pending),
                Err(RecvTimeoutError::Disconnected) => panic!("the server closed its output while we waited for {what}"),
            }
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let m = self.wait_for(
            |m| m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri,
            &format!("diagnostics for {uri}"),
        );
        m["params"]["diagnostics"].as_array().unwrap().clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length:") {
            length = Some(v.trim().parse::<usize>().ok()?);
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// The protocol's position of the first `needle` in `text`: line, and
/// column in UTF-16 code units.
fn position_of(text: &str, needle: &str) -> (u64, u64) {
    let at = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in the text"));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (text[..at].matches('\n').count() as u64, text[line_start..at].encode_utf16().count() as u64)
}

fn pos(text: &str, needle: &str, into: u64) -> Value {
    let (line, character) = position_of(text, needle);
    json!({ "line": line, "character": character + into })
}

fn errors(diags: &[Value]) -> Vec<&Value> {
    diags.iter().filter(|d| d["severity"] == 1).collect()
}

#[test]
fn an_editor_session_on_the_firewall_example() {
    let example = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firewall.xpol")).unwrap();
    let good = std::fs::read_to_string(&example).unwrap();
    let uri = file_uri(&example);
    let (mut client, init) = Client::initialized();
    assert_eq!(init["serverInfo"]["name"], "xpolc");
    assert_eq!(init["capabilities"]["hoverProvider"], true);

    // An unknown field typed into the buffer (not on disk): reported at
    // the field, with the suggestion in the message.
    let bad = good.replace("tcp.dport == 23", "tcp.dprt == 23");
    client.open(&uri, &bad);
    let diags = client.diagnostics(&uri);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:?}");
    let (line, col) = position_of(&bad, "tcp.dprt");
    assert_eq!(errs[0]["range"], json!({ "start": { "line": line, "character": col }, "end": { "line": line, "character": col + 8 } }));
    assert_eq!(errs[0]["code"], "xpol::name::unknown");
    assert!(errs[0]["message"].as_str().unwrap().contains("did you mean `tcp.dport`"), "{}", errs[0]);
    // Its fix, as a code action that replaces the field.
    let actions = client.request(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": uri }, "range": errs[0]["range"], "context": { "diagnostics": [errs[0]] } }),
    );
    let edits = actions.to_string();
    assert!(edits.contains("\"newText\":\"tcp.dport\""), "{actions}");

    // Non-ASCII text before the error on its line: columns are UTF-16
    // code units, not bytes and not characters.
    let rule = "rule \"säge 😀\" xdp /tcp.dprt == 23/ { drop }";
    let unicode = good.replace("xdp /tcp.dport == 23/                       { log(\"telnet: \", rate: 10/s); drop }", rule);
    assert_ne!(unicode, good, "the example's telnet rule was replaced");
    client.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 }, "contentChanges": [{ "text": unicode }] }),
    );
    let diags = client.diagnostics(&uri);
    let by_code = |code: &str| diags.iter().find(|d| d["code"] == code).unwrap_or_else(|| panic!("no {code} in {diags:?}"));
    let byte_col = rule.find("tcp.dprt").unwrap() as u64;
    let (line, col) = position_of(&unicode, "tcp.dprt");
    assert_ne!(col, byte_col, "the test line must tell bytes from UTF-16 units");
    let field = by_code("xpol::name::unknown");
    assert_eq!(field["range"]["start"], json!({ "line": line, "character": col }));
    assert_eq!(field["range"]["end"], json!({ "line": line, "character": col + 8 }));
    // Labels are ASCII only: that error ends after the quoted label, whose
    // `😀` is two UTF-16 units.
    let label = by_code("xpol::label::invalid");
    let (_, quote) = position_of(&unicode, "\"säge");
    let units = "\"säge 😀\"".encode_utf16().count() as u64;
    assert_eq!(label["range"], json!({ "start": { "line": line, "character": quote }, "end": { "line": line, "character": quote + units } }));

    // Fixed: the error goes away (the example's own warnings may stay).
    client.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 3 }, "contentChanges": [{ "text": good }] }),
    );
    let diags = client.diagnostics(&uri);
    assert!(errors(&diags).is_empty(), "{diags:?}");

    // Saving runs the whole build (codegen budgets too): still no error.
    client.notify("textDocument/didSave", json!({ "textDocument": { "uri": uri } }));
    let diags = client.diagnostics(&uri);
    assert!(errors(&diags).is_empty(), "{diags:?}");

    // Hover on a field: its doc from the field table.
    let hover = client.request(
        "textDocument/hover",
        json!({ "textDocument": { "uri": uri }, "position": pos(&good, "tcp.dport == 22", 5) }),
    );
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(text.contains("tcp.dport: int") && text.contains("TCP destination port."), "{text}");
    let (line, col) = position_of(&good, "tcp.dport == 22");
    assert_eq!(hover["range"]["start"], json!({ "line": line, "character": col }));

    // Definition of a set name: its declaration.
    let def = client.request(
        "textDocument/definition",
        json!({ "textDocument": { "uri": uri }, "position": pos(&good, "ip.src in blocklist", 12) }),
    );
    let (line, col) = position_of(&good, "blocklist: cidr");
    assert_eq!(def["uri"], uri);
    assert_eq!(def["range"]["start"], json!({ "line": line, "character": col }));

    // Definition of a const, used after `!in`.
    let def = client.request(
        "textDocument/definition",
        json!({ "textDocument": { "uri": uri }, "position": pos(&good, "!in admins", 5) }),
    );
    let (line, col) = position_of(&good, "admins = {");
    assert_eq!(def["range"]["start"], json!({ "line": line, "character": col }));

    // Definition on an include's path: the file.
    let def = client.request(
        "textDocument/definition",
        json!({ "textDocument": { "uri": uri }, "position": pos(&good, "std/bogons.xpol\"", 5) }),
    );
    assert!(def["uri"].as_str().unwrap().ends_with("/std-policies/bogons.xpol"), "{def}");

    // Completion after `xdp /tc`: every field, with docs, and the names.
    let typing = good.replace("xdp                                         { pass }", "xdp /tc");
    client.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 4 }, "contentChanges": [{ "text": typing }] }),
    );
    let completion = client.request(
        "textDocument/completion",
        json!({ "textDocument": { "uri": uri }, "position": pos(&typing, "xdp /tc\n", 7) }),
    );
    let items = completion.as_array().expect("a list of items");
    let dport = items.iter().find(|i| i["label"] == "tcp.dport").expect("tcp.dport offered");
    assert_eq!(dport["documentation"]["value"], "TCP destination port.");
    let (line, col) = position_of(&typing, "xdp /tc\n");
    assert_eq!(dport["textEdit"]["range"]["start"], json!({ "line": line, "character": col + 5 }), "replaces `tc`");
    for name in ["blocklist", "admins", "bogons", "@blocked"] {
        assert!(items.iter().any(|i| i["label"] == name), "{name} not offered");
    }

    // Code actions where there is nothing to fix: an answer all the same.
    let actions = client.request(
        "textDocument/codeAction",
        json!({
            "textDocument": { "uri": uri },
            "range": { "start": { "line": 0, "character": 0 }, "end": { "line": 0, "character": 0 } },
            "context": { "diagnostics": [] }
        }),
    );
    assert!(actions.is_array(), "{actions}");

    // Shutdown, exit: the server ends on its own, successfully.
    assert_eq!(client.request("shutdown", Value::Null), Value::Null);
    client.notify("exit", Value::Null);
    client.stdin = None;
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = client.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "xpolc lsp did not exit after `exit`");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn errors_in_an_included_file_are_published_for_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    let included = dir.join("inc.xpol");
    let inc_text = "set inc_set: cidr = { 198.18.0.0/15 }\nxdp /udp.dprt == 53/ { drop }\n";
    std::fs::write(&included, inc_text).unwrap();
    let main = dir.join("main.xpol");
    // On disk the root is empty: the buffer is what counts.
    std::fs::write(&main, "").unwrap();
    let main_text = "include \"inc.xpol\"\nxdp /ip.src in inc_set/ { drop }\nxdp { pass }\n";
    let (main_uri, inc_uri) = (file_uri(&main), file_uri(&included));

    let (mut client, _) = Client::initialized();
    client.open(&main_uri, &main_text);
    let diags = client.diagnostics(&inc_uri);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:?}");
    let (line, col) = position_of(inc_text, "udp.dprt");
    assert_eq!(errs[0]["range"]["start"], json!({ "line": line, "character": col }));
    assert!(errors(&client.diagnostics(&main_uri)).is_empty());

    // A name declared in the included file: definition goes there.
    let def = client.request(
        "textDocument/definition",
        json!({ "textDocument": { "uri": main_uri }, "position": pos(main_text, "inc_set/", 2) }),
    );
    assert_eq!(def["uri"], inc_uri);
    let (line, col) = position_of(inc_text, "inc_set");
    assert_eq!(def["range"]["start"], json!({ "line": line, "character": col }));

    // Closing the document withdraws what it published for the include.
    client.notify("textDocument/didClose", json!({ "textDocument": { "uri": main_uri } }));
    assert!(client.diagnostics(&inc_uri).is_empty());
}

#[test]
fn saving_an_included_file_rechecks_the_documents_that_include_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    let included = dir.join("inc.xpol");
    std::fs::write(&included, "xdp /udp.dprt == 53/ { drop }\n").unwrap();
    let main = dir.join("main.xpol");
    let main_text = "include \"inc.xpol\"\nxdp { pass }\n";
    std::fs::write(&main, main_text).unwrap();
    let (main_uri, inc_uri) = (file_uri(&main), file_uri(&included));

    let (mut client, _) = Client::initialized();
    client.open(&main_uri, &main_text);
    assert_eq!(errors(&client.diagnostics(&inc_uri)).len(), 1);

    // The include is fixed in the editor and saved.
    let fixed = "xdp /udp.dport == 53/ { drop }\n";
    std::fs::write(&included, fixed).unwrap();
    client.open(&inc_uri, &fixed);
    client.notify("textDocument/didSave", json!({ "textDocument": { "uri": inc_uri } }));
    // main.xpol's stale error in inc.xpol is withdrawn once main is
    // checked again; until then the union still holds it.
    client.wait_for(
        |m| {
            m["method"] == "textDocument/publishDiagnostics"
                && m["params"]["uri"] == inc_uri
                && m["params"]["diagnostics"].as_array().is_some_and(|d| errors(d).is_empty())
        },
        "inc.xpol without errors",
    );
}
