//! Watch streams: newline-delimited JSON events on a chunked response that stays open, with
//! bookmarks and timeouts, ending when the emulator drops watches or stops.

use super::error::ApiError;
use super::resources::ResourceDef;
use super::selectors::Selector;
use super::store::{ResourceKey, Versioned, WatchRecord};
use super::table;
use super::verbs::{meta_str, partial_metadata, present, presents_as_stored};
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How often an idle watch that asked for bookmarks receives one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

pub(super) fn stream_response<S>(body: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| {
            ApiError::for_code(500, format!("cannot build the watch response: {e}")).into_response()
        })
}

pub(super) fn watch_line(event: &str, object: Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// [`watch_line`] around an object's existing encoding (same JSON, keys in the same order).
fn watch_line_encoded(event: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + event.len() + 24);
    line.extend_from_slice(b"{\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b",\"type\":\"");
    line.extend_from_slice(event.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Bytes::from(line)
}

/// Which writes a watch reports.
pub(super) struct WatchFilter {
    pub(super) key: ResourceKey,
    pub(super) namespace: Option<String>,
    pub(super) labels: Selector,
    pub(super) fields: Selector,
}

impl WatchFilter {
    /// Whether a write is to this watch's kind and namespace.
    fn concerns(&self, record: &WatchRecord) -> bool {
        record.resource == self.key
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == record.namespace)
    }

    /// Whether the selectors accept an object, as presented to the client.
    pub(super) fn selects(&self, presented: &Value) -> bool {
        self.labels.matches(presented) && self.fields.matches(presented)
    }
}

/// What a watch sends before live events: the current objects (for a watch without a
/// `resourceVersion`) or the retained events after the requested one.
pub(super) struct Backlog {
    pub(super) initial: Vec<Arc<Versioned>>,
    /// Whether the client asked for a streaming list (`sendInitialEvents=true`).
    pub(super) send_initial: bool,
    pub(super) replay: Vec<Arc<WatchRecord>>,
}

/// One open watch: turns store events into newline-delimited JSON on the response body.
pub(super) struct WatchStream {
    pub(super) def: ResourceDef,
    pub(super) version: String,
    pub(super) filter: WatchFilter,
    pub(super) as_table: bool,
    /// Metadata only (`as=PartialObjectMetadata`): events carry `PartialObjectMetadata`.
    pub(super) metadata_only: bool,
    pub(super) include: String,
    pub(super) bookmarks: bool,
    pub(super) columns_sent: bool,
    /// The newest `resourceVersion` this stream has seen from the store, reported in
    /// bookmarks: every event up to it was either sent or filtered out.
    pub(super) last_rv: u64,
}

impl WatchStream {
    /// The event line for a stored object, `None` when the selectors leave it out. The
    /// object is copied only where presenting changes it or a Table or metadata is asked
    /// for; otherwise the line wraps the encoding every other reader shares.
    fn line(&mut self, event: &str, object: &Versioned, selected: bool) -> Option<Bytes> {
        if presents_as_stored(&self.def, &self.version, &object.value) && !self.as_table {
            if !selected && !self.filter.selects(&object.value) {
                return None;
            }
            if self.metadata_only {
                return Some(watch_line(event, partial_metadata(&object.value)));
            }
            return Some(watch_line_encoded(event, object.json()));
        }
        let presented = present(&self.def, &self.version, object.value.clone());
        if !selected && !self.filter.selects(&presented) {
            return None;
        }
        if self.as_table {
            let with_columns = !self.columns_sent;
            self.columns_sent = true;
            let rv = meta_str(&presented, "resourceVersion").map(str::to_string);
            let table = table::table(&self.def, &[presented], &self.include, rv, with_columns);
            return Some(watch_line(event, table));
        }
        if self.metadata_only {
            return Some(watch_line(event, partial_metadata(&presented)));
        }
        Some(watch_line(event, presented))
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        watch_line(
            "BOOKMARK",
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": metadata}),
        )
    }

    pub(super) async fn run(
        mut self,
        tx: mpsc::Sender<Bytes>,
        backlog: Backlog,
        mut feed: broadcast::Receiver<Arc<WatchRecord>>,
        timeout: Option<Duration>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        for object in backlog.initial {
            // Selected when the backlog was taken.
            let Some(line) = self.line("ADDED", &object, true) else {
                continue;
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if backlog.send_initial && self.bookmarks && tx.send(self.bookmark(true)).await.is_err() {
            return;
        }
        for record in backlog.replay {
            if !self.forward(&tx, &record, &cancel).await {
                return;
            }
        }
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if self.bookmarks => {
                    if tx.send(self.bookmark(false)).await.is_err() {
                        return;
                    }
                }
                received = feed.recv() => match received {
                    Ok(record) => {
                        if !self.forward(&tx, &record, &cancel).await {
                            return;
                        }
                    }
                    // Fell too far behind: close, the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Sends one record if it matches; false once the client is gone or the watch was
    /// dropped. Checking the token here (not only in `select!`) guarantees that nothing
    /// written after [`super::Emulator::drop_watches`] returns reaches a dropped watch.
    async fn forward(
        &mut self,
        tx: &mpsc::Sender<Bytes>,
        record: &WatchRecord,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> bool {
        if cancel.is_cancelled() {
            return false;
        }
        if record.resource_version <= self.last_rv {
            return true;
        }
        self.last_rv = record.resource_version;
        if !self.filter.concerns(record) {
            return true;
        }
        let Some(line) = self.line(record.event.as_str(), &record.object, false) else {
            return true;
        };
        tx.send(line).await.is_ok()
    }
}
