//! Building bulk requests: documents are serialised into the NDJSON body as they arrive.
//!
//! Each document is written once, at [`BulkBuilder::push`], as an `index` action with the task
//! id as `_id` (the crate's typed `BulkOperation::index(doc).id(id)`) followed by its source:
//!
//! ```text
//! {"index":{"_id":"42"}}
//! {"title":"...","body":"..."}
//! ```
//!
//! The caller can drop the document right after, so a batch holds bytes, not JSON trees (a
//! `serde_json::Value` takes several times the memory of its text). The body is one buffer; a
//! retry of some documents copies only their byte ranges.
//!
//! Bounds: at most `batch_docs` documents and `batch_bytes` bytes of body. A document that
//! would cross a bound is not added ([`Pushed::Full`]: send this batch and push it into the
//! next). A document bigger than `batch_bytes` on its own comes back as a request of its own
//! ([`Pushed::Alone`]), the batch untouched: `batch_bytes` bounds how much is gathered, not
//! what a document may weigh; only the server's refusal (413, or a size error on the item)
//! dead-letters such a document.

use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use elasticsearch::BulkOperation;
use elasticsearch::http::request::Body;

use super::SinkError;
use crate::task::{Document, TaskId};

/// First allocation of a batch buffer; it grows by doubling up to about twice `batch_bytes`.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Whether [`BulkBuilder::push`] added the document.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The document is in the batch.
    Added,
    /// The batch is full: the document was NOT added. Send this batch, then push the document
    /// into a new one.
    Full,
    /// The document alone is bigger than the byte bound: it was NOT added to the batch, and
    /// comes back as a one-document request to send by itself.
    Alone(BulkRequest),
}

/// A batch being filled, with its bounds.
#[derive(Debug)]
pub struct BulkBuilder {
    buf: BytesMut,
    ids: Vec<TaskId>,
    /// End offset in `buf` of each document's two lines (its start is the previous end).
    ends: Vec<usize>,
    max_docs: usize,
    max_bytes: usize,
    first_added: Option<Instant>,
}

impl BulkBuilder {
    /// An empty batch holding at most `max_docs` documents and `max_bytes` bytes of body.
    /// Bounds of zero are raised to one.
    #[must_use]
    pub fn new(max_docs: usize, max_bytes: usize) -> Self {
        let max_docs = max_docs.max(1);
        let max_bytes = max_bytes.max(1);
        Self {
            buf: BytesMut::new(),
            ids: Vec::new(),
            ends: Vec::new(),
            max_docs,
            max_bytes,
            first_added: None,
        }
    }

    /// Serialises `doc` as an `index` action with `_id` = [`TaskId::doc_id`] and appends it.
    ///
    /// Returns [`Pushed::Full`] (document not added) when it would exceed the document count
    /// or byte bound, and [`Pushed::Alone`] with a request holding only this document when it
    /// is bigger than the byte bound by itself; either way the batch is left exactly as it was.
    ///
    /// # Errors
    /// [`SinkError::Serialize`] when the document cannot be written as JSON.
    pub fn push(&mut self, id: TaskId, doc: &Document) -> Result<Pushed, SinkError> {
        if self.ids.len() >= self.max_docs {
            return Ok(Pushed::Full);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(INITIAL_CAPACITY.min(self.max_bytes));
        }
        let start = self.buf.len();
        let op: BulkOperation<&Document> = BulkOperation::index(doc).id(id.doc_id()).into();
        if let Err(source) = op.write(&mut self.buf) {
            self.rewind(start);
            return Err(SinkError::Serialize { id, source });
        }
        let item = self.buf.len() - start;
        if item > self.max_bytes {
            // Its bytes move to a request of their own, without serialising it again.
            let alone = self.buf.split_off(start).freeze();
            self.rewind(start);
            return Ok(Pushed::Alone(BulkRequest {
                ends: vec![alone.len()],
                body: alone,
                ids: vec![id],
            }));
        }
        if self.buf.len() > self.max_bytes {
            self.rewind(start);
            return Ok(Pushed::Full);
        }
        self.ids.push(id);
        self.ends.push(self.buf.len());
        self.first_added.get_or_insert_with(Instant::now);
        Ok(Pushed::Added)
    }

    /// Drops what a refused push wrote, and the memory an oversized document made the buffer
    /// grow to (it would otherwise stay reserved until the batch is sent).
    fn rewind(&mut self, start: usize) {
        self.buf.truncate(start);
        if self.buf.capacity() > self.max_bytes.saturating_mul(2).max(INITIAL_CAPACITY) {
            let mut fresh =
                BytesMut::with_capacity(start.max(INITIAL_CAPACITY.min(self.max_bytes)));
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }

    /// Documents in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no document.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of NDJSON body so far.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// How long ago the first document was added (`None` while empty): the driver flushes a
    /// partial batch once this reaches the flush interval.
    #[must_use]
    pub fn oldest_age(&self) -> Option<Duration> {
        self.first_added.map(|t| t.elapsed())
    }

    /// Whether another document cannot be added because the document bound is reached (the
    /// byte bound is only known when the next document is pushed).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.ids.len() >= self.max_docs || self.buf.len() >= self.max_bytes
    }

    /// Closes the batch for sending.
    #[must_use]
    pub fn finish(self) -> BulkRequest {
        BulkRequest {
            body: self.buf.freeze(),
            ids: self.ids,
            ends: self.ends,
        }
    }
}

/// A closed batch: the NDJSON body and the task id of each document in it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRequest {
    body: Bytes,
    ids: Vec<TaskId>,
    ends: Vec<usize>,
}

impl BulkRequest {
    /// Documents in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no document.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of NDJSON body.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// The task ids, in the order of the body.
    #[must_use]
    pub fn ids(&self) -> &[TaskId] {
        &self.ids
    }

    /// The whole NDJSON body (shares the buffer, no copy).
    #[must_use]
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// Byte range of document `i` (its action line and its source line).
    fn range(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    /// The body for a subset of the documents (indices in increasing order): the whole body
    /// without a copy when the subset is everything, otherwise a copy of just those ranges.
    #[must_use]
    pub fn body_of(&self, indices: &[usize]) -> Bytes {
        if indices.len() == self.ids.len() {
            return self.body.clone();
        }
        let size = indices.iter().map(|&i| self.range(i).len()).sum();
        let mut out = BytesMut::with_capacity(size);
        for &i in indices {
            out.extend_from_slice(&self.body[self.range(i)]);
        }
        out.freeze()
    }

    /// Splits the batch into its ids, for results built without the body.
    #[must_use]
    pub fn into_ids(self) -> Vec<TaskId> {
        self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(n: u64) -> TaskId {
        TaskId::parse(&n.to_string()).unwrap()
    }

    fn doc(v: serde_json::Value) -> Document {
        v.as_object().unwrap().clone()
    }

    /// The body is exactly an index action with the task id as `_id`, then the source, each
    /// on its own line, and the byte count is the body's length.
    #[test]
    fn body_is_exact_ndjson_with_task_ids() {
        let mut b = BulkBuilder::new(10, 10_000);
        assert!(b.is_empty());
        assert_eq!(
            b.push(id(42), &doc(json!({"n": 1, "title": "a"}))).unwrap(),
            Pushed::Added
        );
        assert_eq!(
            b.push(id(7), &doc(json!({"body": "é\n\"q\""}))).unwrap(),
            Pushed::Added
        );
        let expected = "{\"index\":{\"_id\":\"42\"}}\n{\"n\":1,\"title\":\"a\"}\n\
                        {\"index\":{\"_id\":\"7\"}}\n{\"body\":\"é\\n\\\"q\\\"\"}\n";
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes(), expected.len());
        assert!(b.oldest_age().is_some());
        let req = b.finish();
        assert_eq!(std::str::from_utf8(&req.body()).unwrap(), expected);
        assert_eq!(req.bytes(), expected.len());
        assert_eq!(
            req.ids().iter().map(TaskId::doc_id).collect::<Vec<_>>(),
            ["42", "7"]
        );
    }

    /// A raw id with spaces or leading zeros still gets the canonical decimal `_id`.
    #[test]
    fn doc_id_is_the_canonical_number() {
        let mut b = BulkBuilder::new(10, 10_000);
        b.push(TaskId::parse(" 007").unwrap(), &doc(json!({})))
            .unwrap();
        let req = b.finish();
        assert_eq!(&req.body()[..], b"{\"index\":{\"_id\":\"7\"}}\n{}\n");
        assert_eq!(req.ids()[0].raw, " 007");
    }

    /// The document bound says Full before serialising, and the batch is left as it was.
    #[test]
    fn full_by_docs() {
        let mut b = BulkBuilder::new(2, 10_000);
        let d = doc(json!({"x": 1}));
        assert_eq!(b.push(id(1), &d).unwrap(), Pushed::Added);
        assert_eq!(b.push(id(2), &d).unwrap(), Pushed::Added);
        assert!(b.is_full());
        let before = b.bytes();
        assert_eq!(b.push(id(3), &d).unwrap(), Pushed::Full);
        assert_eq!((b.len(), b.bytes()), (2, before));
    }

    /// A document that would take the body over the byte bound is not added, the body is
    /// unchanged, and it fits into the next batch.
    #[test]
    fn full_by_bytes() {
        // Each item is `{"index":{"_id":"N"}}\n` (22 bytes) + `{"x":"aaaaaaaaaa"}\n` (19 bytes).
        let d = doc(json!({"x": "aaaaaaaaaa"}));
        let item = 22 + 19;
        let mut b = BulkBuilder::new(100, 2 * item + 10);
        assert_eq!(b.push(id(1), &d).unwrap(), Pushed::Added);
        assert_eq!(b.bytes(), item);
        assert_eq!(b.push(id(2), &d).unwrap(), Pushed::Added);
        assert_eq!(b.push(id(3), &d).unwrap(), Pushed::Full);
        assert_eq!((b.len(), b.bytes()), (2, 2 * item));
        let req = b.finish();
        assert_eq!(req.body().iter().filter(|&&c| c == b'\n').count(), 4);

        let mut next = BulkBuilder::new(100, 2 * item + 10);
        assert_eq!(next.push(id(3), &d).unwrap(), Pushed::Added);
    }

    /// A body exactly at the byte bound is allowed.
    #[test]
    fn exact_byte_bound_fits() {
        let d = doc(json!({"x": "aaaaaaaaaa"}));
        let mut b = BulkBuilder::new(100, 2 * 41);
        assert_eq!(b.push(id(1), &d).unwrap(), Pushed::Added);
        assert_eq!(b.push(id(2), &d).unwrap(), Pushed::Added);
        assert_eq!(b.bytes(), 82);
        assert!(b.is_full());
    }

    /// A document bigger than the whole byte bound comes back as a request of its own, byte
    /// for byte what it would have been in the batch, and the batch is left as it was, with
    /// none of the big document's memory kept by it.
    #[test]
    fn oversize_doc_comes_back_alone_and_leaves_the_batch_as_it_was() {
        let mut b = BulkBuilder::new(100, 1024);
        b.push(id(1), &doc(json!({"x": 1}))).unwrap();
        let before = b.bytes();
        let big = doc(json!({"body": "z".repeat(100_000)}));
        let Pushed::Alone(alone) = b.push(id(2), &big).unwrap() else {
            panic!("an oversize document is sent alone")
        };
        assert_eq!(alone.len(), 1);
        assert_eq!(alone.ids()[0].value, 2);
        assert_eq!(alone.bytes(), 22 + 100_000 + 12);
        assert!(
            alone
                .body()
                .starts_with(b"{\"index\":{\"_id\":\"2\"}}\n{\"body\":\"zzz")
        );
        assert_eq!(alone.body_of(&[0]), alone.body());
        assert_eq!((b.len(), b.bytes()), (1, before));
        assert!(
            b.buf.capacity() <= 64 * 1024,
            "oversize document left {} bytes reserved",
            b.buf.capacity()
        );
        // The batch goes on taking documents after it.
        assert_eq!(b.push(id(3), &doc(json!({"x": 3}))).unwrap(), Pushed::Added);
        let req = b.finish();
        assert_eq!(
            req.ids().iter().map(|i| i.value).collect::<Vec<_>>(),
            [1, 3]
        );
        // Alone from an empty batch too.
        let mut empty = BulkBuilder::new(100, 1024);
        assert!(matches!(empty.push(id(4), &big), Ok(Pushed::Alone(_))));
        assert!(empty.is_empty());
    }

    /// A retry body holds only the chosen documents, byte for byte; all of them is no copy.
    #[test]
    fn body_of_a_subset_is_those_documents_only() {
        let mut b = BulkBuilder::new(10, 10_000);
        for n in 1..=3 {
            b.push(id(n), &doc(json!({"n": n}))).unwrap();
        }
        let req = b.finish();
        let sub = req.body_of(&[0, 2]);
        assert_eq!(
            &sub[..],
            b"{\"index\":{\"_id\":\"1\"}}\n{\"n\":1}\n{\"index\":{\"_id\":\"3\"}}\n{\"n\":3}\n"
        );
        let all = req.body_of(&[0, 1, 2]);
        assert_eq!(all.as_ptr(), req.body().as_ptr());
    }
}
