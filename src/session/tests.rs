//! The session driven alone, through a fake broker that records what the
//! session asks of the server.

use std::cell::RefCell;
use std::time::Instant;

use super::*;
use crate::stomp::frame::{Limits, Parsed, parse};

/// What the session asked the broker to do.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    Publish(Draft, Option<Confirm>),
    Subscribe {
        room: String,
        sub_n: u32,
        prefix: String,
        mode: AckMode,
        version: Version,
        receipt: Option<String>,
        replay: Option<ReplayFrom>,
    },
    Unsubscribe(String, usize),
}

/// A broker that records calls; subscription keys count from 100, and a
/// SUBSCRIBE's receipt is deferred when `defer_receipts` is set (as for a
/// room owned by another shard).
struct Fake {
    limits: SessionLimits,
    persistent: bool,
    defer_receipts: bool,
    calls: RefCell<Vec<Call>>,
    next_key: RefCell<usize>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            limits: SessionLimits {
                max_subscriptions: 4,
                max_transactions: 2,
                max_transaction_frames: 3,
                max_transaction_bytes: 1000,
                heartbeat_send_ms: 10_000,
                heartbeat_receive_ms: 10_000,
            },
            persistent: true,
            defer_receipts: false,
            calls: RefCell::default(),
            next_key: RefCell::new(100),
        }
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
}

impl Broker for Fake {
    fn limits(&self) -> &SessionLimits {
        &self.limits
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
    fn session_id(&self) -> String {
        "0-1".into()
    }
    fn publish(&self, draft: Draft, confirm: Option<Confirm>) {
        self.calls.borrow_mut().push(Call::Publish(draft, confirm));
    }
    fn subscribe(&self, sub: NewSub<'_>) -> Subscribed {
        let mut k = self.next_key.borrow_mut();
        *k += 1;
        self.calls.borrow_mut().push(Call::Subscribe {
            room: sub.room.into(),
            sub_n: sub.sub_n,
            prefix: String::from_utf8(sub.prefix.to_vec()).unwrap(),
            mode: sub.mode,
            version: sub.version,
            receipt: sub.receipt.map(Into::into),
            replay: sub.replay,
        });
        Subscribed {
            key: *k - 1,
            receipt_now: !self.defer_receipts || sub.receipt.is_none(),
        }
    }
    fn unsubscribe(&self, room: &str, key: usize) {
        self.calls
            .borrow_mut()
            .push(Call::Unsubscribe(room.into(), key));
    }
}

const LIMITS: Limits = Limits {
    max_frame_size: 65536,
    max_headers: 64,
    max_header_length: 8192,
};

/// A session, its output and a broker.
struct T {
    s: Session,
    out: Out,
    b: Fake,
}

impl T {
    fn new() -> T {
        T::with(Fake::new())
    }

    fn with(b: Fake) -> T {
        T {
            s: Session::default(),
            out: Out::new(false, Instant::now()),
            b,
        }
    }

    /// Handle one frame given as text (`\0` added); ERRORs are written as
    /// the connection would. Returns the frames written, as text.
    fn send(&mut self, frame: &str) -> Vec<String> {
        let bytes = format!("{frame}\0");
        let f = match parse(bytes.as_bytes(), self.s.escaping(), &LIMITS).unwrap() {
            Parsed::Frame(f, _) => f,
            _ => panic!("not a frame: {frame:?}"),
        };
        if let Err(e) = self.s.handle(&f, &mut self.out, &self.b) {
            e.write(&mut self.out, f.header("receipt"));
        }
        self.written()
    }

    /// Frames written since the last call.
    fn written(&mut self) -> Vec<String> {
        let text = String::from_utf8(self.out.pending().to_vec()).unwrap();
        self.out.consume(self.out.pending_len());
        text.split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn connect(&mut self, version: &str) {
        let w = self.send(&format!(
            "CONNECT\naccept-version:{version}\nlogin:alice\nheart-beat:0,0\n\n"
        ));
        assert!(w[0].starts_with("CONNECTED\n"), "{w:?}");
    }
}

#[test]
fn heart_beat_header() {
    assert_eq!(parse_heart_beat("0,0"), Some((0, 0)));
    assert_eq!(parse_heart_beat("100,2000"), Some((100, 2000)));
    assert_eq!(parse_heart_beat("100"), None);
    assert_eq!(parse_heart_beat("a,1"), None);
}

#[test]
fn connect_negotiates_the_highest_common_version_and_heart_beats() {
    let mut t = T::new();
    let w =
        t.send("CONNECT\naccept-version:1.0,1.1\nlogin:bob\nheart-beat:5000,20000\nreceipt:c1\n\n");
    assert_eq!(
        w,
        [
            "CONNECTED\nversion:1.1\nheart-beat:10000,10000\nserver:stampede/0.1.0\nsession:0-1\nuser-name:bob\n\n",
            "RECEIPT\nreceipt-id:c1\n\n"
        ]
    );
    assert!(t.s.is_connected());
    // We send at max(ours, what the client wants) and expect at
    // max(ours, what the client can do).
    assert_eq!(t.s.heartbeats(), (20_000, 10_000));
}

#[test]
fn frames_before_connect_and_a_second_connect_are_errors() {
    let mut t = T::new();
    let w = t.send("SEND\ndestination:/topic/a\n\nhi");
    assert!(w[0].starts_with("ERROR\nmessage:not connected\n"), "{w:?}");
    assert!(t.out.is_closing());
    let mut t = T::new();
    t.connect("1.2");
    let w = t.send("CONNECT\naccept-version:1.2\n\n");
    assert!(
        w[0].starts_with("ERROR\nmessage:already connected\n"),
        "{w:?}"
    );
}

#[test]
fn unsupported_version_names_ours() {
    let mut t = T::new();
    let w = t.send("CONNECT\naccept-version:2.0\n\n");
    assert!(
        w[0].starts_with("ERROR\nmessage:unsupported protocol version\nversion:1.0,1.1,1.2\n"),
        "{w:?}"
    );
}

#[test]
fn send_publishes_a_draft_without_reserved_headers() {
    let mut t = T::new();
    t.connect("1.2");
    let w = t.send("SEND\ndestination:/topic/lobby\nx-seq:99\nk:v\nk:w\nreceipt:r1\n\nhello");
    assert!(w.is_empty(), "the RECEIPT waits for the broker: {w:?}");
    assert_eq!(
        t.b.take(),
        [Call::Publish(
            Draft {
                room: "lobby".into(),
                sender: "alice".into(),
                headers: vec![("k".into(), "v".into())],
                body: b"hello".to_vec().into(),
            },
            Some(Confirm::Receipt("r1".into()))
        )]
    );
    // A DISCONNECT waits for that receipt, then both are answered.
    let w = t.send("DISCONNECT\nreceipt:bye\n\n");
    assert!(w.is_empty() && t.s.disconnecting());
    t.s.deferred_receipt(&mut t.out, "r1");
    assert_eq!(
        t.written(),
        ["RECEIPT\nreceipt-id:r1\n\n", "RECEIPT\nreceipt-id:bye\n\n"]
    );
    assert!(t.out.is_closing());
}
