//! An embedded Schema Registry: the part of the Confluent REST API that producers and
//! sluice use (`POST /subjects/{subject}/versions`, `GET /schemas/ids/{id}`,
//! `GET /subjects/{subject}/versions/{version}`, schema references), in memory, on a
//! local port. For the demo and tests; not a registry to run in production.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    /// Schema text and its references (`[{name, subject, version}]`) by id (ids from 1).
    schemas: Vec<(String, serde_json::Value)>,
    /// The ids of a subject's versions (versions from 1).
    subjects: HashMap<String, Vec<u32>>,
    /// Requests for a schema by id, by id.
    reads: HashMap<u32, u64>,
}

/// A registry serving on `127.0.0.1:<port>` until dropped.
pub struct EmbeddedRegistry {
    url: String,
    state: Arc<Mutex<State>>,
    /// `Some((user, password))`: every request needs this basic auth.
    auth: Arc<Mutex<Option<(String, String)>>>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("url", &self.url)
            .finish()
    }
}

impl EmbeddedRegistry {
    pub fn start() -> Result<Self> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| Error::Io { context, source }
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the registry"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(io("registry address"))?
        );
        let me = Self {
            url,
            state: Arc::default(),
            auth: Arc::default(),
            down: Arc::default(),
            stop: Arc::default(),
        };
        listener
            .set_nonblocking(true)
            .map_err(io("registry socket"))?;
        let (state, auth, down, stop) = (
            me.state.clone(),
            me.auth.clone(),
            me.down.clone(),
            me.stop.clone(),
        );
        std::thread::Builder::new()
            .name("sluice-registry".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if down.load(Ordering::Relaxed) {
                                // An unreachable registry: the connection is dropped.
                                drop(stream);
                                continue;
                            }
                            let _ = serve(stream, &state, &auth);
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            })
            .map_err(io("starting the registry thread"))?;
        Ok(me)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Register `schema` (an Avro schema's JSON text); returns its id. The same text
    /// gets the same id.
    pub fn register(&self, schema: &str) -> u32 {
        register(
            &self.state,
            "",
            schema,
            serde_json::Value::Array(Vec::new()),
        )
        .0
    }

    /// Register `schema` as the next version of `subject`, referencing the types
    /// `references` names (`(name, subject, version)`); returns its id and version.
    pub fn register_under(
        &self,
        subject: &str,
        schema: &str,
        references: &[(&str, &str, u32)],
    ) -> (u32, u32) {
        let references = references
            .iter()
            .map(|(name, subject, version)| {
                serde_json::json!({ "name": name, "subject": subject, "version": version })
            })
            .collect();
        register(
            &self.state,
            subject,
            schema,
            serde_json::Value::Array(references),
        )
    }

    /// Requests for schema `id` served so far.
    pub fn reads(&self, id: u32) -> u64 {
        self.state
            .lock()
            .map(|s| s.reads.get(&id).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Require basic auth from now on.
    pub fn require_auth(&self, user: &str, password: &str) {
        if let Ok(mut a) = self.auth.lock() {
            *a = Some((user.into(), password.into()));
        }
    }

    /// Drop every connection (as if the registry were down) or serve again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

impl Drop for EmbeddedRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `schema` with `references` as a version of `subject` (none when empty): its id and
/// version. The same text and references get the same id, and a subject one version per
/// id.
fn register(
    state: &Mutex<State>,
    subject: &str,
    schema: &str,
    references: serde_json::Value,
) -> (u32, u32) {
    let Ok(mut s) = state.lock() else {
        return (0, 0);
    };
    let id = match s
        .schemas
        .iter()
        .position(|(t, r)| t == schema && *r == references)
    {
        Some(i) => i as u32 + 1,
        None => {
            s.schemas.push((schema.to_string(), references));
            s.schemas.len() as u32
        }
    };
    if subject.is_empty() {
        return (id, 0);
    }
    let versions = s.subjects.entry(subject.to_string()).or_default();
    let version = match versions.iter().position(|v| *v == id) {
        Some(i) => i + 1,
        None => {
            versions.push(id);
            versions.len()
        }
    };
    (id, version as u32)
}

fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    auth: &Mutex<Option<(String, String)>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((&h, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or_default();
    let required = auth.lock().ok().and_then(|a| a.clone());
    let (status, reply) = if let Some((user, password)) = required
        && authorization.as_deref() != Some(&basic(&user, &password))
    {
        (401, error_json(40101, "Unauthorized"))
    } else {
        route(&method, path, &body, state)
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Unprocessable Entity",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    out.flush()
}

fn route(method: &str, path: &str, body: &[u8], state: &Mutex<State>) -> (u16, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            let Ok(id) = id.parse::<u32>() else {
                return (404, error_json(40403, "Schema not found"));
            };
            let Ok(mut s) = state.lock() else {
                return (404, error_json(40403, "Schema not found"));
            };
            *s.reads.entry(id).or_default() += 1;
            match s.schemas.get((id as usize).wrapping_sub(1)) {
                Some((text, references)) => (
                    200,
                    serde_json::json!({ "schema": text, "references": references }).to_string(),
                ),
                None => (404, error_json(40403, "Schema not found")),
            }
        }
        ("GET", ["subjects", subject, "versions", version]) => {
            let Ok(s) = state.lock() else {
                return (404, error_json(40401, "Subject not found"));
            };
            let found = s.subjects.get(*subject).and_then(|ids| {
                let v: usize = version.parse().ok()?;
                let id = *ids.get(v.checked_sub(1)?)?;
                let (text, references) = s.schemas.get(id as usize - 1)?;
                Some(serde_json::json!({
                    "subject": subject, "version": v, "id": id,
                    "schema": text, "references": references,
                }))
            });
            match found {
                Some(v) => (200, v.to_string()),
                None => (404, error_json(40402, "Version not found")),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let body = serde_json::from_slice::<serde_json::Value>(body).ok();
            let text = body
                .as_ref()
                .and_then(|v| v.get("schema").and_then(|s| s.as_str()).map(String::from));
            let references = body
                .as_ref()
                .and_then(|v| v.get("references").cloned())
                .unwrap_or(serde_json::Value::Array(Vec::new()));
            match text {
                Some(t) => (
                    200,
                    serde_json::json!({ "id": register(state, subject, &t, references).0 })
                        .to_string(),
                ),
                None => (422, error_json(42201, "Invalid schema")),
            }
        }
        _ => (404, error_json(404, "HTTP 404 Not Found")),
    }
}

fn error_json(code: u32, message: &str) -> String {
    serde_json::json!({ "error_code": code, "message": message }).to_string()
}

/// The `Authorization` header value of HTTP basic auth.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}
