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
    auth: crate::auth::Authenticator,
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
                prefixes: crate::config::Prefixes::default(),
            },
            auth: crate::auth::Authenticator::none(),
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
    fn auth(&self) -> &crate::auth::Authenticator {
        &self.auth
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
    fn unsubscribe(&self, room: &str, key: usize, _user: &str) {
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
    /// The error the last `send` ended with, if any.
    error: Option<StompError>,
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
            error: None,
        }
    }

    /// A session connected with `version` (login alice, no heart-beats).
    fn connected(version: &str) -> T {
        T::connected_with(Fake::new(), version)
    }

    fn connected_with(b: Fake, version: &str) -> T {
        let mut t = T::with(b);
        t.connect(version);
        t
    }

    /// Handle one frame given as text (`\0` added); ERRORs are written as
    /// the connection would. Returns the frames written, as text.
    fn send(&mut self, frame: &str) -> Vec<String> {
        let bytes = format!("{frame}\0");
        let f = match parse(bytes.as_bytes(), self.s.escaping(), &LIMITS).unwrap() {
            Parsed::Frame(f, _) => f,
            _ => panic!("not a frame: {frame:?}"),
        };
        self.error = None;
        if let Err(e) = self.s.handle(&f, &mut self.out, &self.b) {
            e.write(&mut self.out, f.header("receipt"));
            self.error = Some(e);
        }
        self.written()
    }

    /// Send a frame that must succeed (a setup step); the frames written.
    fn ok(&mut self, frame: &str) -> Vec<String> {
        let w = self.send(frame);
        assert!(self.error.is_none(), "{frame:?} failed: {w:?}");
        w
    }

    /// Send a frame that must fail: it writes exactly one ERROR (returned),
    /// asks nothing of the broker, starts closing, and its error closes the
    /// WebSocket with `code`.
    fn fails(&mut self, frame: &str, code: CloseCode) -> String {
        let calls_before = self.b.calls.borrow().len();
        let w = self.send(frame);
        assert_eq!(w.len(), 1, "one ERROR expected for {frame:?}: {w:?}");
        assert!(self.out.is_closing(), "not closing after {frame:?}");
        assert_eq!(
            self.error.as_ref().map(|e| e.close_code),
            Some(code),
            "{frame:?}"
        );
        assert_eq!(
            self.b.calls.borrow().len(),
            calls_before,
            "a failed frame asked the broker something: {:?}",
            self.b.calls.borrow()
        );
        w.into_iter().next().unwrap()
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

    /// Subscribe (a frame without receipt that must succeed); its `sub_n`,
    /// as the broker was told.
    fn subscribe(&mut self, frame: &str) -> u32 {
        let w = self.send(frame);
        assert!(w.is_empty(), "{w:?}");
        match self.b.take().as_slice() {
            [Call::Subscribe { sub_n, .. }] => *sub_n,
            other => panic!("expected one Subscribe: {other:?}"),
        }
    }

    /// Deliveries of `seqs` to subscription `sub_n` that must all be
    /// accepted (at most `MAX_PENDING` pending); the ack ids handed out.
    fn pend(&mut self, sub_n: u32, seqs: &[u64]) -> Vec<Option<(u32, u64)>> {
        seqs.iter()
            .map(
                |&seq| match self.s.pend(sub_n, seq, MAX_PENDING, &mut self.out) {
                    Pend::Deliver(ack) => ack,
                    other => panic!("pend({sub_n}, {seq}): {other:?}"),
                },
            )
            .collect()
    }

    /// The sequence numbers of subscription `sub_n` awaiting ACK.
    fn pending(&self, sub_n: u32) -> Vec<u64> {
        let sub = self
            .s
            .subs
            .iter()
            .find(|s| s.n == sub_n)
            .expect("no such sub");
        sub.pending.iter().copied().collect()
    }
}

/// `max_pending` for `T::pend`.
const MAX_PENDING: usize = 10;

const SERVER: &str = concat!("stampede/", env!("CARGO_PKG_VERSION"));

/// The CONNECTED frame for `Fake`'s default heart-beat settings.
fn connected(version: &str, user: &str) -> String {
    connected_hb(version, "10000,10000", user)
}

fn connected_hb(version: &str, hb: &str, user: &str) -> String {
    format!(
        "CONNECTED\nversion:{version}\nheart-beat:{hb}\nserver:{SERVER}\nsession:0-1\nuser-name:{user}\n\n"
    )
}

fn receipt(id: &str) -> String {
    format!("RECEIPT\nreceipt-id:{id}\n\n")
}

/// An ERROR frame as `Out::error` writes it (for texts that need no
/// escaping).
fn error(message: &str, receipt: Option<&str>, detail: &str) -> String {
    error_with(message, receipt, "", detail)
}

/// Like `error`, with `extra` header lines (each ending in `\n`) after the
/// `receipt-id`.
fn error_with(message: &str, receipt: Option<&str>, extra: &str, detail: &str) -> String {
    let receipt = receipt
        .map(|r| format!("receipt-id:{r}\n"))
        .unwrap_or_default();
    format!(
        "ERROR\nmessage:{message}\n{receipt}{extra}content-type:text/plain\ncontent-length:{}\n\n{detail}",
        detail.len()
    )
}

fn draft(room: &str, sender: &str, headers: &[(&str, &str)], body: &str) -> Draft {
    Draft {
        room: room.into(),
        sender: sender.into(),
        headers: headers.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
        body: body.as_bytes().into(),
    }
}

fn subscribed(
    room: &str,
    sub_n: u32,
    prefix: &str,
    mode: AckMode,
    version: Version,
    receipt: Option<&str>,
    replay: Option<ReplayFrom>,
) -> Call {
    Call::Subscribe {
        room: room.into(),
        sub_n,
        prefix: prefix.into(),
        mode,
        version,
        receipt: receipt.map(Into::into),
        replay,
    }
}

const BAD_DESTINATION: &str = "destinations are /topic/<name> or /queue/<name> with a name of 1-128 characters from A-Z a-z 0-9 _ . ~ -, and user destinations (subscribe to /user/topic/<name> or /user/queue/<name>, send to /user/<user>/topic/<name>); got";

fn bad_destination(dest: &str) -> String {
    error(
        "invalid destination",
        Some("r"),
        &format!("{BAD_DESTINATION} '{dest}'"),
    )
}

fn unknown_ack(receipt: Option<&str>, command: &str, what: &str) -> String {
    error(
        "unknown ack id",
        receipt,
        &format!("{command} {what} does not name a message pending acknowledgement"),
    )
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

// ---- CONNECT ----------------------------------------------------------------

#[test]
fn connect_without_accept_version_is_1_0() {
    let mut t = T::new();
    assert_eq!(t.ok("CONNECT\nhost:x\n\n"), [connected("1.0", "anonymous")]);
    assert!(t.s.is_connected());
    assert_eq!(t.s.version, Version::V10);
    assert_eq!(t.s.escaping(), Escaping::None);
    // No heart-beat header: none either way.
    assert_eq!(t.s.heartbeats(), (0, 0));
    // 1.0 takes header values literally: `\c` stays two characters.
    t.ok("SEND\ndestination:/topic/a\nk:a\\cb\n\n");
    assert_eq!(
        t.b.take(),
        [Call::Publish(
            draft("a", "anonymous", &[("k", "a\\cb")], ""),
            None
        )]
    );
}

#[test]
fn accept_version_picks_the_highest_common_and_allows_spaces() {
    for (offered, version, escaping) in [
        ("1.0", Version::V10, Escaping::None),
        ("1.1", Version::V11, Escaping::V11),
        ("1.2", Version::V12, Escaping::V12),
        ("1.0,1.1", Version::V11, Escaping::V11),
        ("1.1,1.0", Version::V11, Escaping::V11),
        ("1.0,1.2", Version::V12, Escaping::V12),
        ("1.2,3.0", Version::V12, Escaping::V12),
        ("2.0,1.0", Version::V10, Escaping::None),
        ("1.0, 1.1, 1.2", Version::V12, Escaping::V12),
        (" 1.1 , 2.0 ", Version::V11, Escaping::V11),
        ("1.0 ,1.1", Version::V11, Escaping::V11),
        ("1.1,,1.0", Version::V11, Escaping::V11),
    ] {
        let mut t = T::new();
        let w = t.send(&format!("CONNECT\naccept-version:{offered}\n\n"));
        assert_eq!(w, [connected(version.as_str(), "anonymous")], "{offered:?}");
        assert_eq!(t.s.version, version, "{offered:?}");
        assert_eq!(t.s.escaping(), escaping, "{offered:?}");
    }
}

#[test]
fn no_common_version_is_an_error_naming_ours() {
    for offered in ["2.0,3.1", "", "1.3, 1 .2", "1.2.0"] {
        let mut t = T::new();
        let w = t.fails(
            &format!("CONNECT\naccept-version:{offered}\nheart-beat:bad\nreceipt:v-1\n\n"),
            CloseCode::Protocol,
        );
        // The version is checked first: the bad heart-beat goes unmentioned.
        assert_eq!(
            w,
            error_with(
                "unsupported protocol version",
                Some("v-1"),
                "version:1.0,1.1,1.2\n",
                &format!("supported versions are 1.0,1.1,1.2; client offered {offered}"),
            )
        );
        assert!(!t.s.is_connected());
    }
}

#[test]
fn heart_beats_negotiate_per_direction_and_zero_turns_them_off() {
    // (server send, server receive, client heart-beat, expected (send, recv))
    for (ours_send, ours_recv, client, want) in [
        (10_000, 10_000, Some("0,0"), (0, 0)),
        (10_000, 10_000, None, (0, 0)),
        // The client cannot send: we expect nothing; it wants ours.
        (10_000, 10_000, Some("0,5000"), (10_000, 0)),
        // The client sends but wants none from us.
        (10_000, 10_000, Some("5000,0"), (0, 10_000)),
        (10_000, 10_000, Some("5000,20000"), (20_000, 10_000)),
        (10_000, 10_000, Some("30000,1000"), (10_000, 30_000)),
        (10_000, 10_000, Some(" 1000 , 2000 "), (10_000, 10_000)),
        // Our side off.
        (0, 10_000, Some("5000,5000"), (0, 10_000)),
        (10_000, 0, Some("5000,5000"), (10_000, 0)),
        (0, 0, Some("5000,5000"), (0, 0)),
    ] {
        let mut b = Fake::new();
        b.limits.heartbeat_send_ms = ours_send;
        b.limits.heartbeat_receive_ms = ours_recv;
        let mut t = T::with(b);
        let hb = client
            .map(|h| format!("heart-beat:{h}\n"))
            .unwrap_or_default();
        let w = t.send(&format!("CONNECT\naccept-version:1.2\n{hb}\n"));
        // CONNECTED states our own settings, not the negotiated ones.
        assert_eq!(
            w,
            [connected_hb(
                "1.2",
                &format!("{ours_send},{ours_recv}"),
                "anonymous"
            )],
            "{client:?}"
        );
        assert_eq!(t.s.heartbeats(), want, "{ours_send},{ours_recv} {client:?}");
    }
}

#[test]
fn invalid_heart_beat_header_is_an_error() {
    for hb in [
        "abc",
        "1000",
        "-1,0",
        "1,2,3",
        "",
        ",",
        "1000;1000",
        "1.5,0",
    ] {
        let mut t = T::new();
        let w = t.fails(
            &format!("CONNECT\naccept-version:1.2\nheart-beat:{hb}\nreceipt:h\n\n"),
            CloseCode::Protocol,
        );
        assert_eq!(
            w,
            error(
                "invalid heart-beat header",
                Some("h"),
                &format!("expected two integers like 10000,10000, got '{hb}'"),
            ),
            "{hb:?}"
        );
        assert!(!t.s.is_connected());
        assert_eq!(t.s.heartbeats(), (0, 0));
    }
}

#[test]
fn missing_or_empty_login_is_anonymous() {
    for (login, user) in [
        ("", "anonymous"),
        ("login:\n", "anonymous"),
        ("login:bob\npasscode:secret\n", "bob"),
        // CONNECT headers are taken literally, whatever the version.
        ("login:a\\cb\n", "a\\cb"),
    ] {
        let mut t = T::new();
        let w = t.send(&format!("CONNECT\naccept-version:1.2\n{login}\n"));
        assert_eq!(w, [connected("1.2", user)], "{login:?}");
        t.ok("SEND\ndestination:/topic/lobby\n\nhi");
        assert_eq!(
            t.b.take(),
            [Call::Publish(draft("lobby", user, &[], "hi"), None)],
            "{login:?}"
        );
    }
}

#[test]
fn stomp_command_connects_like_connect_with_a_receipt() {
    let mut t = T::new();
    let w = t.send("STOMP\naccept-version:1.1,1.2\nhost:x\nlogin:carol\nreceipt:s-1\n\n");
    assert_eq!(w, [connected("1.2", "carol"), receipt("s-1")]);
    assert!(t.s.is_connected());
    t.ok("SEND\ndestination:/topic/a\nreceipt:r\n\nvia STOMP");
    assert_eq!(
        t.b.take(),
        [Call::Publish(
            draft("a", "carol", &[], "via STOMP"),
            Some(Confirm::Receipt("r".into()))
        )]
    );
    // A second STOMP is a second CONNECT.
    assert_eq!(
        t.fails(
            "STOMP\naccept-version:1.2\nreceipt:again\n\n",
            CloseCode::Protocol
        ),
        error(
            "already connected",
            Some("again"),
            "a second CONNECT on one connection is not allowed"
        )
    );
}

#[test]
fn every_frame_before_connect_is_an_error() {
    for (command, frame) in [
        ("SEND", "SEND\ndestination:/topic/a\nreceipt:early\n\nx"),
        (
            "SUBSCRIBE",
            "SUBSCRIBE\ndestination:/topic/a\nid:s1\nreceipt:early\n\n",
        ),
        ("BEGIN", "BEGIN\ntransaction:t\nreceipt:early\n\n"),
        ("ACK", "ACK\nid:0-1\nreceipt:early\n\n"),
        ("DISCONNECT", "DISCONNECT\nreceipt:early\n\n"),
    ] {
        let mut t = T::new();
        assert_eq!(
            t.fails(frame, CloseCode::Protocol),
            error(
                "not connected",
                Some("early"),
                &format!("{command} before CONNECT; send CONNECT first"),
            )
        );
        assert!(!t.s.is_connected());
        assert!(!t.s.disconnecting());
    }
}

// ---- SUBSCRIBE ----------------------------------------------------------------

#[test]
fn subscribe_tells_the_broker_and_answers_its_receipt() {
    let mut t = T::connected("1.2");
    let w = t
        .send("SUBSCRIBE\nid:s1\ndestination:/topic/room-1\nack:client-individual\nreceipt:r1\n\n");
    assert_eq!(w, [receipt("r1")]);
    let w = t.send("SUBSCRIBE\nid:s2\ndestination:/topic/room-1\n\n");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        t.b.take(),
        [
            subscribed(
                "room-1",
                0,
                "subscription:s1\n",
                AckMode::ClientIndividual,
                Version::V12,
                Some("r1"),
                None
            ),
            subscribed(
                "room-1",
                1,
                "subscription:s2\n",
                AckMode::Auto,
                Version::V12,
                None,
                None
            ),
        ]
    );
    assert_eq!(t.s.subscription(0), Some(("room-1", 100)));
    assert_eq!(t.s.subscription(1), Some(("room-1", 101)));
    assert_eq!(t.s.subscription(2), None);
    // `ack:client` too.
    t.subscribe("SUBSCRIBE\nid:s3\ndestination:/topic/x\nack:client\n\n");
    assert_eq!(t.s.subs[2].mode, AckMode::Client);
}

#[test]
fn subscribe_without_destination_is_an_error() {
    let mut t = T::connected("1.2");
    assert_eq!(
        t.fails("SUBSCRIBE\nid:s1\nreceipt:r\n\n", CloseCode::Protocol),
        error(
            "missing header 'destination'",
            Some("r"),
            "SUBSCRIBE requires the 'destination' header"
        )
    );
    assert_eq!(t.s.subscription(0), None);
}

#[test]
fn subscribe_to_a_bad_destination_is_an_error() {
    let long = format!("/topic/{}", "a".repeat(129));
    for dest in [
        "/exchange/x",
        "/user/app/x",
        "/queue/",
        "/queue/a/b",
        "/topic/",
        "/topic",
        "topic/a",
        "/TOPIC/a",
        "/topic//a",
        "/topic/a b",
        "/topic/a:b",
        "/topic/café",
        long.as_str(),
    ] {
        let mut t = T::connected("1.1");
        // (`:` in a 1.1 header value is written escaped.)
        let wire = dest.replace(':', "\\c");
        let w = t.fails(
            &format!("SUBSCRIBE\nid:s1\ndestination:{wire}\nreceipt:r\n\n"),
            CloseCode::Protocol,
        );
        assert_eq!(w, bad_destination(dest), "{dest:?}");
    }
    // 128 characters is the longest room; every allowed character.
    let mut t = T::connected("1.2");
    let room = format!("{}_.~-Z9", "a".repeat(122));
    assert_eq!(room.len(), 128);
    t.subscribe(&format!("SUBSCRIBE\nid:s1\ndestination:/topic/{room}\n\n"));
    assert_eq!(t.s.subscription(0), Some((room.as_str(), 100)));
}

#[test]
fn subscribe_without_id_is_an_error_but_on_1_0() {
    for version in ["1.1", "1.2"] {
        let mut t = T::connected(version);
        assert_eq!(
            t.fails(
                "SUBSCRIBE\ndestination:/topic/a\nreceipt:r\n\n",
                CloseCode::Protocol
            ),
            error(
                "missing header 'id'",
                Some("r"),
                "SUBSCRIBE requires the 'id' header"
            ),
            "{version}"
        );
    }
    // 1.0: the destination names the subscription.
    let mut t = T::connected("1.0");
    assert_eq!(
        t.ok("SUBSCRIBE\ndestination:/topic/a\nreceipt:r\n\n"),
        [receipt("r")]
    );
    assert_eq!(
        t.b.take(),
        [subscribed(
            "a",
            0,
            "subscription:/topic/a\n",
            AckMode::Auto,
            Version::V10,
            Some("r"),
            None
        )]
    );
    // … so UNSUBSCRIBE can name it by that id, …
    assert_eq!(
        t.ok("UNSUBSCRIBE\nid:/topic/a\nreceipt:u\n\n"),
        [receipt("u")]
    );
    assert_eq!(t.b.take(), [Call::Unsubscribe("a".into(), 100)]);
    // … and a second one to the same destination without an id clashes.
    t.subscribe("SUBSCRIBE\ndestination:/topic/a\n\n");
    assert_eq!(
        t.fails(
            "SUBSCRIBE\ndestination:/topic/a\nreceipt:r2\n\n",
            CloseCode::Protocol
        ),
        error(
            "subscription id already in use",
            Some("r2"),
            "this connection already has a subscription with id '/topic/a'"
        )
    );
}

#[test]
fn duplicate_subscription_id_is_an_error() {
    let mut t = T::connected("1.2");
    t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/alpha\n\n");
    assert_eq!(
        t.fails(
            "SUBSCRIBE\nid:s1\ndestination:/topic/beta\nreceipt:r\n\n",
            CloseCode::Protocol
        ),
        error(
            "subscription id already in use",
            Some("r"),
            "this connection already has a subscription with id 's1'"
        )
    );
    assert_eq!(t.s.subscription(0), Some(("alpha", 100)));
    assert_eq!(t.s.subscription(1), None);
}

#[test]
fn invalid_ack_mode_is_an_error() {
    for mode in ["Client", "individual", "", "none", "auto "] {
        let mut t = T::connected("1.2");
        assert_eq!(
            t.fails(
                &format!("SUBSCRIBE\nid:s1\ndestination:/topic/a\nack:{mode}\nreceipt:r\n\n"),
                CloseCode::Protocol
            ),
            error(
                "invalid ack mode",
                Some("r"),
                &format!("ack must be auto, client or client-individual, not '{mode}'")
            ),
            "{mode:?}"
        );
    }
}

#[test]
fn max_subscriptions_is_enforced_and_freed_by_unsubscribe() {
    let mut b = Fake::new();
    b.limits.max_subscriptions = 2;
    let mut t = T::connected_with(b, "1.2");
    t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\n\n");
    t.subscribe("SUBSCRIBE\nid:s2\ndestination:/topic/b\n\n");
    t.ok("UNSUBSCRIBE\nid:s1\n\n");
    assert_eq!(t.b.take(), [Call::Unsubscribe("a".into(), 100)]);
    assert_eq!(t.subscribe("SUBSCRIBE\nid:s3\ndestination:/topic/c\n\n"), 2);
    assert_eq!(
        t.fails(
            "SUBSCRIBE\nid:s4\ndestination:/topic/d\nreceipt:r4\n\n",
            CloseCode::Policy
        ),
        error(
            "too many subscriptions",
            Some("r4"),
            "at most 2 subscriptions per connection"
        )
    );
}

#[test]
fn replay_headers_are_parsed() {
    for (headers, replay) in [
        ("x-since-seq:0\n", ReplayFrom::Since(0)),
        ("x-since-seq:42\n", ReplayFrom::Since(42)),
        ("x-since-seq: 7 \n", ReplayFrom::Since(7)),
        ("x-replay-last:10\n", ReplayFrom::Last(10)),
        (
            "x-replay-last:18446744073709551615\n",
            ReplayFrom::Last(u64::MAX),
        ),
    ] {
        let mut t = T::connected("1.2");
        t.ok(&format!(
            "SUBSCRIBE\nid:s1\ndestination:/topic/a\n{headers}\n"
        ));
        assert_eq!(
            t.b.take(),
            [subscribed(
                "a",
                0,
                "subscription:s1\n",
                AckMode::Auto,
                Version::V12,
                None,
                Some(replay)
            )],
            "{headers:?}"
        );
    }
}

#[test]
fn bad_replay_headers_are_errors() {
    for (headers, message, detail) in [
        (
            "x-since-seq:abc\n",
            "invalid x-since-seq header",
            "x-since-seq must be a non-negative integer, got 'abc'",
        ),
        (
            "x-since-seq:-1\n",
            "invalid x-since-seq header",
            "x-since-seq must be a non-negative integer, got '-1'",
        ),
        (
            "x-since-seq:\n",
            "invalid x-since-seq header",
            "x-since-seq must be a non-negative integer, got ''",
        ),
        (
            "x-replay-last:1e3\n",
            "invalid x-replay-last header",
            "x-replay-last must be a non-negative integer, got '1e3'",
        ),
        (
            "x-replay-last:18446744073709551616\n",
            "invalid x-replay-last header",
            "x-replay-last must be a non-negative integer, got '18446744073709551616'",
        ),
        (
            "x-since-seq:1\nx-replay-last:2\n",
            "conflicting replay headers",
            "use either x-since-seq or x-replay-last, not both",
        ),
        // A bad number is named before the conflict.
        (
            "x-since-seq:1\nx-replay-last:z\n",
            "invalid x-replay-last header",
            "x-replay-last must be a non-negative integer, got 'z'",
        ),
    ] {
        let mut t = T::connected("1.2");
        let w = t.fails(
            &format!("SUBSCRIBE\nid:s1\ndestination:/topic/a\nreceipt:r\n{headers}\n"),
            CloseCode::Protocol,
        );
        assert_eq!(w, error(message, Some("r"), detail), "{headers:?}");
        assert_eq!(t.s.subscription(0), None);
    }
}

#[test]
fn replay_without_persistence_is_an_error() {
    for headers in ["x-since-seq:0\n", "x-replay-last:5\n"] {
        let mut b = Fake::new();
        b.persistent = false;
        let mut t = T::connected_with(b, "1.2");
        // A plain subscription is fine.
        t.subscribe("SUBSCRIBE\nid:live\ndestination:/topic/a\n\n");
        assert_eq!(
            t.fails(
                &format!("SUBSCRIBE\nid:s1\ndestination:/topic/a\nreceipt:r\n{headers}\n"),
                CloseCode::Protocol
            ),
            error(
                "history is disabled",
                Some("r"),
                "x-since-seq and x-replay-last need stored messages; this server runs with --persist false"
            )
        );
    }
}

#[test]
fn the_message_prefix_escapes_the_id_per_version() {
    // (version, id as written on the wire, prefix the broker gets)
    for (version, wire, prefix) in [
        (
            "1.2",
            "a\\cb\\\\c\\nd\\re",
            "subscription:a\\cb\\\\c\\nd\\re\n",
        ),
        ("1.1", "a\\cb\\\\c\\nd", "subscription:a\\cb\\\\c\\nd\n"),
        // 1.0: taken and given back literally.
        ("1.0", "a:b\\c", "subscription:a:b\\c\n"),
        ("1.2", "plain-id", "subscription:plain-id\n"),
    ] {
        let mut t = T::connected(version);
        t.ok(&format!("SUBSCRIBE\nid:{wire}\ndestination:/topic/a\n\n"));
        match t.b.take().as_slice() {
            [Call::Subscribe { prefix: p, .. }] => assert_eq!(p, prefix, "{version} {wire:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn subscribe_receipt_may_be_deferred_and_a_disconnect_waits_for_it() {
    let mut b = Fake::new();
    b.defer_receipts = true;
    let mut t = T::connected_with(b, "1.2");
    // Without a receipt nothing is owed.
    assert!(
        t.ok("SUBSCRIBE\nid:s0\ndestination:/topic/a\n\n")
            .is_empty()
    );
    assert!(
        t.ok("SUBSCRIBE\nid:s1\ndestination:/topic/b\nreceipt:r1\n\n")
            .is_empty()
    );
    assert_eq!(
        t.b.take(),
        [
            subscribed(
                "a",
                0,
                "subscription:s0\n",
                AckMode::Auto,
                Version::V12,
                None,
                None
            ),
            subscribed(
                "b",
                1,
                "subscription:s1\n",
                AckMode::Auto,
                Version::V12,
                Some("r1"),
                None
            ),
        ]
    );
    // The subscription exists already.
    assert_eq!(t.s.subscription(1), Some(("b", 101)));
    let before = Instant::now();
    assert!(t.send("DISCONNECT\nreceipt:bye\n\n").is_empty());
    let after = Instant::now();
    assert!(t.s.disconnecting());
    assert!(!t.out.is_closing());
    let deadline = t.s.disconnect_deadline().unwrap();
    assert!(before + CLOSE_FLUSH_TIMEOUT <= deadline && deadline <= after + CLOSE_FLUSH_TIMEOUT);
    t.s.deferred_receipt(&mut t.out, "r1");
    assert_eq!(t.written(), [receipt("r1"), receipt("bye")]);
    assert!(t.out.is_closing());
    assert!(!t.s.disconnecting());
    assert_eq!(t.s.disconnect_deadline(), None);
}

#[test]
fn a_deferred_subscribe_receipt_is_written_when_the_broker_answers() {
    let mut b = Fake::new();
    b.defer_receipts = true;
    let mut t = T::connected_with(b, "1.1");
    assert!(
        t.ok("SUBSCRIBE\nid:s1\ndestination:/topic/b\nreceipt:r\\c1\n\n")
            .is_empty()
    );
    t.s.deferred_receipt(&mut t.out, "r:1");
    // Escaped per version.
    assert_eq!(t.written(), ["RECEIPT\nreceipt-id:r\\c1\n\n"]);
    assert!(!t.out.is_closing());
    // Nothing is owed any more: DISCONNECT is answered at once.
    assert_eq!(t.send("DISCONNECT\nreceipt:d\n\n"), [receipt("d")]);
    assert!(t.out.is_closing());
}

// ---- UNSUBSCRIBE --------------------------------------------------------------

#[test]
fn unsubscribe_by_id_hands_back_the_broker_key() {
    let mut t = T::connected("1.2");
    t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\n\n");
    t.subscribe("SUBSCRIBE\nid:s2\ndestination:/topic/b\n\n");
    t.subscribe("SUBSCRIBE\nid:s3\ndestination:/topic/a\n\n");
    assert_eq!(t.send("UNSUBSCRIBE\nid:s2\nreceipt:u\n\n"), [receipt("u")]);
    assert_eq!(t.b.take(), [Call::Unsubscribe("b".into(), 101)]);
    assert_eq!(t.send("UNSUBSCRIBE\nid:s3\n\n"), Vec::<String>::new());
    assert_eq!(t.b.take(), [Call::Unsubscribe("a".into(), 102)]);
    assert_eq!(t.s.subscription(0), Some(("a", 100)));
    assert_eq!(t.s.subscription(1), None);
    assert_eq!(t.s.subscription(2), None);
    // The id is free again; sub numbers are not reused.
    assert_eq!(t.subscribe("SUBSCRIBE\nid:s2\ndestination:/topic/c\n\n"), 3);
    assert_eq!(t.s.subscription(3), Some(("c", 103)));
    // Deliveries to a removed subscription are skipped.
    assert_eq!(t.s.pend(1, 1, MAX_PENDING, &mut t.out), Pend::Gone);
}

#[test]
fn unsubscribe_on_1_0_may_name_the_destination() {
    let mut t = T::connected("1.0");
    t.subscribe("SUBSCRIBE\nid:x\ndestination:/topic/a\n\n");
    t.subscribe("SUBSCRIBE\nid:y\ndestination:/topic/b\n\n");
    assert_eq!(
        t.ok("UNSUBSCRIBE\ndestination:/topic/b\nreceipt:u\n\n"),
        [receipt("u")]
    );
    assert_eq!(t.b.take(), [Call::Unsubscribe("b".into(), 101)]);
    assert_eq!(t.s.subscription(1), None);
    assert_eq!(t.s.subscription(0), Some(("a", 100)));
    // With neither header, the id is what is missing.
    assert_eq!(
        t.fails("UNSUBSCRIBE\nreceipt:u2\n\n", CloseCode::Protocol),
        error(
            "missing header 'id'",
            Some("u2"),
            "UNSUBSCRIBE requires the 'id' header"
        )
    );
}

#[test]
fn unsubscribe_by_unknown_destination_on_1_0_is_an_error() {
    let mut t = T::connected("1.0");
    t.subscribe("SUBSCRIBE\nid:x\ndestination:/topic/a\n\n");
    // NB: the detail names the (absent) id, not the destination.
    assert_eq!(
        t.fails(
            "UNSUBSCRIBE\ndestination:/topic/zzz\nreceipt:u\n\n",
            CloseCode::Protocol
        ),
        error(
            "unknown subscription",
            Some("u"),
            "no subscription '' on this connection"
        )
    );
    assert_eq!(t.s.subscription(0), Some(("a", 100)));
}

#[test]
fn unsubscribe_needs_an_id_after_1_0() {
    for version in ["1.1", "1.2"] {
        let mut t = T::connected(version);
        t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\n\n");
        assert_eq!(
            t.fails(
                "UNSUBSCRIBE\ndestination:/topic/a\nreceipt:u\n\n",
                CloseCode::Protocol
            ),
            error(
                "missing header 'id'",
                Some("u"),
                "UNSUBSCRIBE requires the 'id' header"
            ),
            "{version}"
        );
        assert_eq!(t.s.subscription(0), Some(("a", 100)));
    }
}

#[test]
fn unsubscribe_unknown_id_is_an_error() {
    let mut t = T::connected("1.2");
    t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\n\n");
    assert_eq!(
        t.fails("UNSUBSCRIBE\nid:nope\nreceipt:u\n\n", CloseCode::Protocol),
        error(
            "unknown subscription",
            Some("u"),
            "no subscription 'nope' on this connection"
        )
    );
    assert_eq!(t.s.subscription(0), Some(("a", 100)));
}

// ---- ACK / NACK ---------------------------------------------------------------

#[test]
fn pend_hands_out_ack_ids_only_for_client_modes_on_1_2() {
    let mut t = T::connected("1.2");
    let auto = t.subscribe("SUBSCRIBE\nid:a\ndestination:/topic/r\n\n");
    let client = t.subscribe("SUBSCRIBE\nid:c\ndestination:/topic/r\nack:client\n\n");
    let indiv = t.subscribe("SUBSCRIBE\nid:i\ndestination:/topic/r\nack:client-individual\n\n");
    assert_eq!((auto, client, indiv), (0, 1, 2));
    assert_eq!(t.s.pend(auto, 7, 0, &mut t.out), Pend::Deliver(None));
    assert_eq!(
        t.s.pend(client, 7, MAX_PENDING, &mut t.out),
        Pend::Deliver(Some((1, 7)))
    );
    assert_eq!(
        t.s.pend(indiv, 7, MAX_PENDING, &mut t.out),
        Pend::Deliver(Some((2, 7)))
    );
    assert_eq!(t.s.pend(9, 7, MAX_PENDING, &mut t.out), Pend::Gone);
    assert!(t.written().is_empty());
    assert_eq!(t.pending(auto), Vec::<u64>::new());
    assert_eq!(t.pending(client), [7]);
    assert_eq!(t.pending(indiv), [7]);
    // Before 1.2 MESSAGE has no `ack` header, but the message is pending.
    for version in ["1.0", "1.1"] {
        let mut t = T::connected(version);
        for mode in ["client", "client-individual"] {
            let n = t.subscribe(&format!(
                "SUBSCRIBE\nid:{mode}\ndestination:/topic/r\nack:{mode}\n\n"
            ));
            assert_eq!(t.pend(n, &[3, 4]), [None, None], "{version} {mode}");
            assert_eq!(t.pending(n), [3, 4]);
        }
    }
}

#[test]
fn client_ack_is_cumulative_on_1_2() {
    for command in ["ACK", "NACK"] {
        let mut t = T::connected("1.2");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
        assert_eq!(
            t.pend(n, &[1, 2, 3]),
            [Some((0, 1)), Some((0, 2)), Some((0, 3))]
        );
        assert_eq!(
            t.ok(&format!("{command}\nid:0-2\nreceipt:a\n\n")),
            [receipt("a")]
        );
        assert_eq!(t.pending(n), [3], "{command}");
        // 1 was covered by the ACK of 2.
        assert_eq!(
            t.fails(
                &format!("{command}\nid:0-1\nreceipt:b\n\n"),
                CloseCode::Protocol
            ),
            unknown_ack(Some("b"), command, "1")
        );
    }
    // ACKing the last one leaves nothing pending.
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
    t.pend(n, &[5, 9, 12]);
    assert!(t.send("ACK\nid:0-12\n\n").is_empty());
    assert_eq!(t.pending(n), Vec::<u64>::new());
    t.pend(n, &[13]);
    assert!(t.send("ACK\nid:0-13\n\n").is_empty());
    assert_eq!(t.pending(n), Vec::<u64>::new());
}

#[test]
fn client_individual_ack_is_not_cumulative() {
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client-individual\n\n");
    t.pend(n, &[1, 2, 3]);
    assert_eq!(t.send("ACK\nid:0-3\nreceipt:a3\n\n"), [receipt("a3")]);
    assert_eq!(t.pending(n), [1, 2]);
    assert!(t.send("NACK\nid:0-1\n\n").is_empty());
    assert_eq!(t.pending(n), [2]);
    assert_eq!(
        t.fails("ACK\nid:0-3\nreceipt:dup\n\n", CloseCode::Protocol),
        unknown_ack(Some("dup"), "ACK", "3")
    );
    assert_eq!(t.pending(n), [2]);
}

#[test]
fn ack_on_1_1_names_message_id_and_subscription() {
    for mode in ["client", "client-individual"] {
        let mut t = T::connected("1.1");
        let other = t.subscribe("SUBSCRIBE\nid:other\ndestination:/topic/alpha\nack:client\n\n");
        let n = t.subscribe(&format!(
            "SUBSCRIBE\nid:s\\c1\ndestination:/topic/alpha\nack:{mode}\n\n"
        ));
        t.pend(other, &[1, 2, 3]);
        t.pend(n, &[1, 2, 3]);
        // `:` is escaped in 1.1 header values (as the MESSAGE had it).
        assert_eq!(
            t.ok("ACK\nmessage-id:alpha\\c2\nsubscription:s\\c1\nreceipt:x\n\n"),
            [receipt("x")]
        );
        let want: &[u64] = if mode == "client" { &[3] } else { &[1, 3] };
        assert_eq!(t.pending(n), want, "{mode}");
        assert_eq!(t.pending(other), [1, 2, 3], "{mode}");
        // The subscription header picks which one.
        assert!(
            t.ok("NACK\nmessage-id:alpha\\c3\nsubscription:other\n\n")
                .is_empty()
        );
        assert_eq!(t.pending(other), Vec::<u64>::new());
        assert_eq!(t.pending(n), want, "{mode}");
    }
}

#[test]
fn ack_on_1_1_errors() {
    let cases = [
        (
            "ACK\nmessage-id:alpha\\c1\nreceipt:e\n\n",
            error(
                "missing header 'subscription'",
                Some("e"),
                "ACK requires the 'subscription' header",
            ),
        ),
        (
            "NACK\nsubscription:s1\nreceipt:e\n\n",
            error(
                "missing header 'message-id'",
                Some("e"),
                "NACK requires the 'message-id' header",
            ),
        ),
        // Unknown subscription, room not that of the subscription, no seq.
        (
            "ACK\nmessage-id:alpha\\c1\nsubscription:s9\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "alpha:1"),
        ),
        (
            "ACK\nmessage-id:beta\\c1\nsubscription:s1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "beta:1"),
        ),
        (
            "ACK\nmessage-id:alpha\nsubscription:s1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "alpha"),
        ),
        (
            "ACK\nmessage-id:alpha\\cx\nsubscription:s1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "alpha:x"),
        ),
        // Known subscription, seq not pending: only the seq is named.
        (
            "ACK\nmessage-id:alpha\\c99\nsubscription:s1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "99"),
        ),
    ];
    for (frame, want) in cases {
        let mut t = T::connected("1.1");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/alpha\nack:client\n\n");
        t.pend(n, &[1]);
        assert_eq!(t.fails(frame, CloseCode::Protocol), want, "{frame:?}");
        assert_eq!(t.pending(n), [1]);
    }
}

#[test]
fn ack_on_1_0_may_leave_out_the_subscription() {
    let mut t = T::connected("1.0");
    let a = t.subscribe("SUBSCRIBE\nid:a\ndestination:/topic/alpha\nack:client-individual\n\n");
    let b = t.subscribe("SUBSCRIBE\nid:b\ndestination:/topic/alpha\nack:client\n\n");
    t.pend(a, &[1, 2]);
    t.pend(b, &[3, 4]);
    // Found by room and pending seq: the second subscription holds 4.
    assert_eq!(
        t.ok("ACK\nmessage-id:alpha:4\nreceipt:k\n\n"),
        [receipt("k")]
    );
    assert_eq!(t.pending(b), Vec::<u64>::new());
    assert_eq!(t.pending(a), [1, 2]);
    // With a subscription header it is used as on 1.1.
    assert!(
        t.ok("ACK\nmessage-id:alpha:2\nsubscription:a\n\n")
            .is_empty()
    );
    assert_eq!(t.pending(a), [1]);
    assert_eq!(
        t.fails(
            "ACK\nmessage-id:alpha:2\nreceipt:e\n\n",
            CloseCode::Protocol
        ),
        unknown_ack(Some("e"), "ACK", "alpha:2")
    );
}

#[test]
fn ack_on_1_2_errors() {
    let cases = [
        (
            "ACK\nreceipt:e\n\n",
            error(
                "missing header 'id'",
                Some("e"),
                "ACK requires the 'id' header",
            ),
        ),
        (
            "NACK\nreceipt:e\n\n",
            error(
                "missing header 'id'",
                Some("e"),
                "NACK requires the 'id' header",
            ),
        ),
        (
            "ACK\nid:nope\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "nope"),
        ),
        (
            "ACK\nid:1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "1"),
        ),
        (
            "NACK\nid:9-1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "NACK", "9-1"),
        ),
        (
            "ACK\nid:0-x\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "0-x"),
        ),
        // A known subscription but no such pending seq names the seq.
        (
            "ACK\nid:0-2\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "2"),
        ),
        // Nothing is pending on an auto subscription.
        (
            "ACK\nid:1-1\nreceipt:e\n\n",
            unknown_ack(Some("e"), "ACK", "1"),
        ),
        // A 1.1-style ACK is not understood on 1.2.
        (
            "ACK\nmessage-id:r\\c1\nsubscription:s1\nreceipt:e\n\n",
            error(
                "missing header 'id'",
                Some("e"),
                "ACK requires the 'id' header",
            ),
        ),
    ];
    for (frame, want) in cases {
        let mut t = T::connected("1.2");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
        let auto = t.subscribe("SUBSCRIBE\nid:s2\ndestination:/topic/r\n\n");
        t.pend(n, &[1]);
        assert_eq!(
            t.s.pend(auto, 1, MAX_PENDING, &mut t.out),
            Pend::Deliver(None)
        );
        assert_eq!(t.fails(frame, CloseCode::Protocol), want, "{frame:?}");
        assert_eq!(t.pending(n), [1]);
    }
}

#[test]
fn pend_beyond_max_pending_is_refused_with_an_error() {
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client-individual\n\n");
    assert_eq!(t.s.pend(n, 1, 2, &mut t.out), Pend::Deliver(Some((0, 1))));
    assert_eq!(t.s.pend(n, 2, 2, &mut t.out), Pend::Deliver(Some((0, 2))));
    assert!(t.written().is_empty());
    // An ACK frees room for one more.
    assert!(t.send("ACK\nid:0-1\n\n").is_empty());
    assert_eq!(t.s.pend(n, 3, 2, &mut t.out), Pend::Deliver(Some((0, 3))));
    assert!(!t.out.is_closing());
    assert_eq!(t.s.pend(n, 4, 2, &mut t.out), Pend::Refused);
    assert_eq!(
        t.written(),
        [error(
            "too many unacknowledged messages",
            None,
            "subscription has 2 messages without ACK; acknowledge or use ack:auto"
        )]
    );
    assert!(t.out.is_closing());
    assert_eq!(t.pending(n), [2, 3]);
    // Later refusals write no second ERROR.
    assert_eq!(t.s.pend(n, 5, 2, &mut t.out), Pend::Refused);
    assert!(t.written().is_empty());
}

// ---- transactions -----------------------------------------------------------

#[test]
fn a_transaction_holds_its_frames_until_commit() {
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client-individual\n\n");
    t.pend(n, &[1, 2]);
    assert_eq!(
        t.send("BEGIN\ntransaction:t1\nreceipt:b\n\n"),
        [receipt("b")]
    );
    // A SEND held by a transaction is answered at once: it is only held.
    assert_eq!(
        t.ok("SEND\ndestination:/topic/a\ntransaction:t1\nk:v\nreceipt:s1\n\nbody-a"),
        [receipt("s1")]
    );
    assert_eq!(
        t.ok("ACK\nid:0-1\ntransaction:t1\nreceipt:a1\n\n"),
        [receipt("a1")]
    );
    // Outside the transaction, at once.
    t.ok("SEND\ndestination:/topic/a\n\noutside");
    assert_eq!(
        t.b.take(),
        [Call::Publish(draft("a", "alice", &[], "outside"), None)]
    );
    assert_eq!(t.pending(n), [1, 2]);
    t.ok("SEND\ndestination:/topic/b\ntransaction:t1\n\nbody-b");
    // COMMIT without a receipt: published with nothing owed, ACK applied.
    assert!(t.send("COMMIT\ntransaction:t1\n\n").is_empty());
    assert_eq!(
        t.b.take(),
        [
            Call::Publish(draft("a", "alice", &[("k", "v")], "body-a"), None),
            Call::Publish(draft("b", "alice", &[], "body-b"), None),
        ]
    );
    assert_eq!(t.pending(n), [2]);
    // The transaction is gone.
    assert_eq!(
        t.fails("COMMIT\ntransaction:t1\nreceipt:c\n\n", CloseCode::Protocol),
        error("unknown transaction", Some("c"), "no open transaction 't1'")
    );
}

#[test]
fn abort_drops_everything_held() {
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
    t.pend(n, &[1, 2]);
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\none");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\ntwo");
    t.ok("ACK\nid:0-2\ntransaction:t1\n\n");
    assert_eq!(
        t.send("ABORT\ntransaction:t1\nreceipt:ab\n\n"),
        [receipt("ab")]
    );
    assert_eq!(t.b.take(), []);
    assert_eq!(t.pending(n), [1, 2]);
    // Its name is free again.
    assert_eq!(
        t.send("BEGIN\ntransaction:t1\nreceipt:b\n\n"),
        [receipt("b")]
    );
    assert_eq!(t.send("ABORT\ntransaction:t1\n\n"), Vec::<String>::new());
    assert_eq!(
        t.fails("ABORT\ntransaction:t1\nreceipt:x\n\n", CloseCode::Protocol),
        error("unknown transaction", Some("x"), "no open transaction 't1'")
    );
}

#[test]
fn missing_transaction_header_is_an_error() {
    for command in ["BEGIN", "COMMIT", "ABORT"] {
        let mut t = T::connected("1.2");
        t.ok("BEGIN\ntransaction:t1\n\n");
        assert_eq!(
            t.fails(&format!("{command}\nreceipt:r\n\n"), CloseCode::Protocol),
            error(
                "missing header 'transaction'",
                Some("r"),
                &format!("{command} requires the 'transaction' header")
            )
        );
    }
}

#[test]
fn unknown_transaction_is_an_error() {
    for frame in [
        "COMMIT\ntransaction:nope\nreceipt:r\n\n",
        "ABORT\ntransaction:nope\nreceipt:r\n\n",
        "SEND\ndestination:/topic/a\ntransaction:nope\nreceipt:r\n\nx",
        "ACK\nid:0-1\ntransaction:nope\nreceipt:r\n\n",
        "NACK\nid:0-1\ntransaction:nope\nreceipt:r\n\n",
    ] {
        let mut t = T::connected("1.2");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
        t.pend(n, &[1]);
        t.ok("BEGIN\ntransaction:other\n\n");
        assert_eq!(
            t.fails(frame, CloseCode::Protocol),
            error(
                "unknown transaction",
                Some("r"),
                "no open transaction 'nope'"
            ),
            "{frame:?}"
        );
        assert_eq!(t.pending(n), [1]);
    }
}

#[test]
fn begin_twice_is_an_error() {
    let mut t = T::connected("1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    assert_eq!(
        t.fails("BEGIN\ntransaction:t1\nreceipt:r\n\n", CloseCode::Protocol),
        error(
            "transaction already begun",
            Some("r"),
            "transaction 't1' is already open"
        )
    );
}

#[test]
fn max_transactions_is_enforced_and_freed_by_commit_and_abort() {
    let mut t = T::connected("1.2");
    assert_eq!(t.b.limits.max_transactions, 2);
    for frame in [
        "BEGIN\ntransaction:t1\n\n",
        "BEGIN\ntransaction:t2\n\n",
        "COMMIT\ntransaction:t1\n\n",
        "BEGIN\ntransaction:t3\n\n",
        "ABORT\ntransaction:t2\n\n",
        "BEGIN\ntransaction:t4\n\n",
    ] {
        assert!(t.send(frame).is_empty(), "{frame:?}");
    }
    assert_eq!(
        t.fails("BEGIN\ntransaction:t5\nreceipt:r5\n\n", CloseCode::Policy),
        error(
            "too many transactions",
            Some("r5"),
            "at most 2 open transactions per connection"
        )
    );
}

#[test]
fn max_transaction_frames_counts_sends_and_acks() {
    for last in [
        "SEND\ndestination:/topic/a\ntransaction:t1\nreceipt:over\n\nx",
        "ACK\nid:0-1\ntransaction:t1\nreceipt:over\n\n",
    ] {
        let mut t = T::connected("1.2");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
        t.pend(n, &[1]);
        assert_eq!(t.b.limits.max_transaction_frames, 3);
        t.ok("BEGIN\ntransaction:t1\n\n");
        t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\n0");
        t.ok("NACK\nid:0-1\ntransaction:t1\n\n");
        t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\n2");
        assert!(!t.out.is_closing());
        assert_eq!(
            t.fails(last, CloseCode::Policy),
            error(
                "too many frames in transaction",
                Some("over"),
                "a transaction holds at most 3 frames"
            )
        );
        assert_eq!(t.b.take(), []);
    }
    // Another transaction has its own count.
    let mut t = T::connected("1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("BEGIN\ntransaction:t2\n\n");
    for tx in ["t1", "t2", "t1", "t2", "t1", "t2"] {
        assert!(
            t.ok(&format!(
                "SEND\ndestination:/topic/a\ntransaction:{tx}\n\nx"
            ))
            .is_empty()
        );
    }
    assert!(!t.out.is_closing());
}

#[test]
fn max_transaction_bytes_covers_all_open_transactions() {
    // A held SEND costs its header names and values (less `transaction` and
    // `receipt`) plus its body: `destination` + `/topic/a` = 19 bytes.
    let mut b = Fake::new();
    b.limits.max_transaction_bytes = 40;
    let mut t = T::connected_with(b, "1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("BEGIN\ntransaction:t2\n\n");
    let body21 = "b".repeat(21);
    assert_eq!(
        t.ok(&format!(
            "SEND\ndestination:/topic/a\ntransaction:t1\nreceipt:s\n\n{body21}"
        )),
        [receipt("s")]
    );
    // Exactly at the budget; any more is too many, in any transaction.
    assert_eq!(
        t.fails(
            "SEND\ndestination:/topic/a\ntransaction:t2\nreceipt:r\n\n",
            CloseCode::Policy
        ),
        error(
            "too many bytes in transactions",
            Some("r"),
            "open transactions may hold at most 40 bytes per connection (max_transaction_bytes)"
        )
    );

    // ABORT and COMMIT give the bytes back.
    let mut b = Fake::new();
    b.limits.max_transaction_bytes = 40;
    let mut t = T::connected_with(b, "1.2");
    let send = |tx: &str| format!("SEND\ndestination:/topic/a\ntransaction:{tx}\n\n{body21}");
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok(&send("t1"));
    t.ok("ABORT\ntransaction:t1\n\n");
    t.ok("BEGIN\ntransaction:t2\n\n");
    assert!(t.send(&send("t2")).is_empty());
    t.ok("COMMIT\ntransaction:t2\n\n");
    t.ok("BEGIN\ntransaction:t3\n\n");
    assert!(t.send(&send("t3")).is_empty());
    assert!(!t.out.is_closing());
    assert_eq!(t.b.take().len(), 1);

    // One byte less of budget and the same SEND does not fit.
    let mut b = Fake::new();
    b.limits.max_transaction_bytes = 39;
    let mut t = T::connected_with(b, "1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    assert_eq!(
        t.fails(&send("t1"), CloseCode::Policy),
        error(
            "too many bytes in transactions",
            None,
            "open transactions may hold at most 39 bytes per connection (max_transaction_bytes)"
        )
    );
}

#[test]
fn a_bad_send_in_a_transaction_fails_at_send_time() {
    for (frame, want) in [
        (
            "SEND\ntransaction:t1\nreceipt:r\n\nx",
            error(
                "missing header 'destination'",
                Some("r"),
                "SEND requires the 'destination' header",
            ),
        ),
        (
            "SEND\ndestination:/exchange/x\ntransaction:t1\nreceipt:r\n\nx",
            bad_destination("/exchange/x"),
        ),
    ] {
        let mut t = T::connected("1.2");
        t.ok("BEGIN\ntransaction:t1\n\n");
        t.ok("SEND\ndestination:/topic/ok\ntransaction:t1\n\nfine");
        assert_eq!(t.fails(frame, CloseCode::Protocol), want, "{frame:?}");
        assert_eq!(t.b.take(), []);
        // (Probing the state the connection would drop:) only the good
        // SEND is held.
        t.ok("COMMIT\ntransaction:t1\n\n");
        assert_eq!(
            t.b.take(),
            [Call::Publish(draft("ok", "alice", &[], "fine"), None)]
        );
    }
}

#[test]
fn commit_is_all_or_nothing() {
    let mut b = Fake::new();
    b.limits.max_transaction_frames = 10;
    let mut t = T::connected_with(b, "1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client-individual\n\n");
    t.pend(n, &[1, 2]);
    for frame in [
        "BEGIN\ntransaction:t1\n\n",
        "SEND\ndestination:/topic/a\ntransaction:t1\n\nfirst",
        "ACK\nid:0-1\ntransaction:t1\n\n",
    ] {
        assert!(t.send(frame).is_empty(), "{frame:?}");
    }
    // Not checked until COMMIT.
    assert_eq!(
        t.ok("ACK\nid:0-99\ntransaction:t1\nreceipt:held\n\n"),
        [receipt("held")]
    );
    assert!(
        t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\nsecond")
            .is_empty()
    );
    assert_eq!(
        t.fails("COMMIT\ntransaction:t1\nreceipt:c\n\n", CloseCode::Protocol),
        unknown_ack(Some("c"), "ACK", "99")
    );
    // Neither SEND went out, and the good ACK was not applied either.
    assert_eq!(t.b.take(), []);
    assert_eq!(t.pending(n), [1, 2]);
    assert_eq!(t.s.take_group(0), None);
}

#[test]
fn commit_with_a_receipt_waits_for_its_group() {
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
    t.pend(n, &[1]);
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\none");
    t.ok("ACK\nid:0-1\ntransaction:t1\n\n");
    t.ok("SEND\ndestination:/topic/b\ntransaction:t1\n\ntwo");
    assert!(t.send("COMMIT\ntransaction:t1\nreceipt:c\n\n").is_empty());
    assert_eq!(
        t.b.take(),
        [
            Call::Publish(draft("a", "alice", &[], "one"), Some(Confirm::Group(0))),
            Call::Publish(draft("b", "alice", &[], "two"), Some(Confirm::Group(0))),
        ]
    );
    // The ACK applies at once.
    assert_eq!(t.pending(n), Vec::<u64>::new());
    // A DISCONNECT waits for the COMMIT's receipt.
    assert!(t.send("DISCONNECT\nreceipt:bye\n\n").is_empty());
    assert!(t.s.disconnecting());
    t.s.group_part_done(0, &mut t.out);
    assert!(t.written().is_empty());
    // Some other group: nothing.
    t.s.group_part_done(7, &mut t.out);
    assert!(t.written().is_empty());
    assert!(t.s.disconnecting());
    t.s.group_part_done(0, &mut t.out);
    assert_eq!(t.written(), [receipt("c"), receipt("bye")]);
    assert!(t.out.is_closing());
    assert!(!t.s.disconnecting());
    // Done with: a late report writes nothing.
    t.s.group_part_done(0, &mut t.out);
    assert!(t.written().is_empty());
}

#[test]
fn each_commit_gets_its_own_group() {
    let mut t = T::connected("1.2");
    for (tx, body) in [("t1", "x"), ("t2", "y")] {
        t.ok(&format!("BEGIN\ntransaction:{tx}\n\n"));
        t.ok(&format!(
            "SEND\ndestination:/topic/a\ntransaction:{tx}\n\n{body}"
        ));
    }
    assert!(t.send("COMMIT\ntransaction:t2\nreceipt:c2\n\n").is_empty());
    assert!(t.send("COMMIT\ntransaction:t1\nreceipt:c1\n\n").is_empty());
    assert_eq!(
        t.b.take(),
        [
            Call::Publish(draft("a", "alice", &[], "y"), Some(Confirm::Group(0))),
            Call::Publish(draft("a", "alice", &[], "x"), Some(Confirm::Group(1))),
        ]
    );
    t.s.group_part_done(1, &mut t.out);
    // c2's COMMIT came first: c1's receipt waits behind it.
    assert!(t.written().is_empty());
    assert!(t.send("DISCONNECT\n\n").is_empty());
    assert!(t.s.disconnecting());
    t.s.group_part_done(0, &mut t.out);
    assert_eq!(t.written(), [receipt("c2"), receipt("c1")]);
    assert!(t.out.is_closing());
}

#[test]
fn commit_receipt_is_immediate_when_nothing_is_stored() {
    // Persistence off: the SENDs go out unconfirmed and the RECEIPT follows.
    let mut b = Fake::new();
    b.persistent = false;
    let mut t = T::connected_with(b, "1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\none");
    assert_eq!(
        t.ok("COMMIT\ntransaction:t1\nreceipt:c\n\n"),
        [receipt("c")]
    );
    assert_eq!(
        t.b.take(),
        [Call::Publish(draft("a", "alice", &[], "one"), None)]
    );
    assert_eq!(t.s.take_group(0), None);
    // Nothing owed.
    assert_eq!(t.send("DISCONNECT\nreceipt:d\n\n"), [receipt("d")]);

    // Persistent, but no SEND in it (empty, or ACKs only).
    let mut t = T::connected("1.2");
    let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/r\nack:client\n\n");
    t.pend(n, &[1]);
    t.ok("BEGIN\ntransaction:e\n\n");
    assert_eq!(
        t.send("COMMIT\ntransaction:e\nreceipt:c1\n\n"),
        [receipt("c1")]
    );
    t.ok("BEGIN\ntransaction:a\n\n");
    t.ok("ACK\nid:0-1\ntransaction:a\n\n");
    assert_eq!(
        t.send("COMMIT\ntransaction:a\nreceipt:c2\n\n"),
        [receipt("c2")]
    );
    assert_eq!(t.pending(n), Vec::<u64>::new());
    assert_eq!(t.b.take(), []);
    assert_eq!(t.s.take_group(0), None);
    assert_eq!(t.send("DISCONNECT\nreceipt:d\n\n"), [receipt("d")]);
}

#[test]
fn take_group_forgets_a_failed_commit() {
    let mut t = T::connected("1.2");
    t.ok("BEGIN\ntransaction:t1\n\n");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\none");
    t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\ntwo");
    assert!(t.send("COMMIT\ntransaction:t1\nreceipt:c\n\n").is_empty());
    assert_eq!(t.b.take().len(), 2);
    t.s.group_part_done(0, &mut t.out);
    assert_eq!(t.s.take_group(0).as_deref(), Some("c"));
    assert_eq!(t.s.take_group(0), None);
    assert_eq!(t.s.take_group(1), None);
    // The remaining SEND's report finds no group.
    t.s.group_part_done(0, &mut t.out);
    assert!(t.written().is_empty());
}

// ---- SEND, bodies, DISCONNECT, closing ------------------------------------------

#[test]
fn send_errors_and_send_without_receipt() {
    for (frame, want) in [
        (
            "SEND\nreceipt:r\n\nx",
            error(
                "missing header 'destination'",
                Some("r"),
                "SEND requires the 'destination' header",
            ),
        ),
        (
            "SEND\ndestination:/exchange/a\nreceipt:r\n\nx",
            bad_destination("/exchange/a"),
        ),
        (
            "SEND\ndestination:/topic/\nreceipt:r\n\nx",
            bad_destination("/topic/"),
        ),
    ] {
        let mut t = T::connected("1.2");
        assert_eq!(t.fails(frame, CloseCode::Protocol), want, "{frame:?}");
    }
    // Without a receipt nothing is owed: DISCONNECT is answered at once.
    let mut t = T::connected("1.2");
    assert!(t.send("SEND\ndestination:/topic/a\n\nx").is_empty());
    assert_eq!(
        t.b.take(),
        [Call::Publish(draft("a", "alice", &[], "x"), None)]
    );
    assert_eq!(t.send("DISCONNECT\nreceipt:d\n\n"), [receipt("d")]);
    assert!(t.out.is_closing());
}

#[test]
fn only_send_may_have_a_body() {
    for (command, frame) in [
        (
            "SUBSCRIBE",
            "SUBSCRIBE\ndestination:/topic/a\nid:s9\nreceipt:r\n\nbody",
        ),
        ("UNSUBSCRIBE", "UNSUBSCRIBE\nid:s1\nreceipt:r\n\noops"),
        ("BEGIN", "BEGIN\ntransaction:t9\nreceipt:r\n\noops"),
        ("COMMIT", "COMMIT\ntransaction:t1\nreceipt:r\n\noops"),
        ("ABORT", "ABORT\ntransaction:t1\nreceipt:r\n\noops"),
        ("ACK", "ACK\nid:0-1\nreceipt:r\n\noops"),
        ("NACK", "NACK\nid:0-1\nreceipt:r\n\noops"),
        ("DISCONNECT", "DISCONNECT\nreceipt:r\n\noops"),
        // Checked before "already connected".
        ("CONNECT", "CONNECT\naccept-version:1.2\nreceipt:r\n\noops"),
    ] {
        let mut t = T::connected("1.2");
        let n = t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\nack:client\n\n");
        t.pend(n, &[1]);
        t.ok("BEGIN\ntransaction:t1\n\n");
        t.ok("SEND\ndestination:/topic/a\ntransaction:t1\n\nheld");
        assert_eq!(
            t.fails(frame, CloseCode::Protocol),
            error(
                "frame must not have a body",
                Some("r"),
                &format!("only SEND may carry a body, not {command}")
            ),
            "{frame:?}"
        );
        // The frame did nothing.
        assert_eq!(t.s.subscription(0), Some(("a", 100)));
        assert_eq!(t.s.subscription(1), None);
        assert_eq!(t.pending(n), [1]);
        assert!(!t.s.disconnecting());
        // (Probing the state the connection would drop:) t1 is open still.
        t.ok("COMMIT\ntransaction:t1\n\n");
        assert_eq!(
            t.b.take(),
            [Call::Publish(draft("a", "alice", &[], "held"), None)]
        );
    }
}

#[test]
fn disconnect_with_nothing_owed_answers_and_closes() {
    let mut t = T::connected("1.2");
    assert_eq!(
        t.send("DISCONNECT\nreceipt:bye-77\n\n"),
        [receipt("bye-77")]
    );
    assert!(t.out.is_closing());
    assert!(!t.s.disconnecting());
    assert_eq!(t.s.disconnect_deadline(), None);

    let mut t = T::connected("1.0");
    assert!(t.send("DISCONNECT\n\n").is_empty());
    assert!(t.out.is_closing());
    assert!(!t.s.disconnecting());
}

#[test]
fn a_waiting_disconnect_is_answered_at_its_deadline_regardless() {
    let mut t = T::connected("1.2");
    t.ok("SEND\ndestination:/topic/a\nreceipt:s1\n\nx");
    t.ok("SEND\ndestination:/topic/a\nreceipt:s2\n\ny");
    assert!(t.send("DISCONNECT\nreceipt:bye\n\n").is_empty());
    t.s.deferred_receipt(&mut t.out, "s1");
    assert_eq!(t.written(), [receipt("s1")]);
    assert!(t.s.disconnecting());
    assert!(!t.out.is_closing());
    // What the sweep does once `disconnect_deadline` passed.
    t.s.finish_disconnect(&mut t.out);
    assert_eq!(t.written(), [receipt("bye")]);
    assert!(t.out.is_closing());
    assert!(!t.s.disconnecting());
    // A second call has nothing left to answer.
    t.s.finish_disconnect(&mut t.out);
    assert!(t.written().is_empty());
}

#[test]
fn unsubscribe_all_removes_every_subscription_and_transaction() {
    let mut b = Fake::new();
    b.limits.max_transaction_bytes = 40;
    let mut t = T::connected_with(b, "1.2");
    t.subscribe("SUBSCRIBE\nid:s1\ndestination:/topic/a\n\n");
    t.subscribe("SUBSCRIBE\nid:s2\ndestination:/topic/b\nack:client\n\n");
    t.subscribe("SUBSCRIBE\nid:s3\ndestination:/topic/a\n\n");
    t.ok("UNSUBSCRIBE\nid:s1\n\n");
    assert_eq!(t.b.take(), [Call::Unsubscribe("a".into(), 100)]);
    t.ok("BEGIN\ntransaction:t1\n\n");
    let send = |tx: &str| {
        format!(
            "SEND\ndestination:/topic/a\ntransaction:{tx}\n\n{}",
            "b".repeat(21)
        )
    };
    assert!(t.send(&send("t1")).is_empty());
    t.s.unsubscribe_all(&t.b);
    // `swap_remove` put s3 where s1 was.
    assert_eq!(
        t.b.take(),
        [
            Call::Unsubscribe("a".into(), 102),
            Call::Unsubscribe("b".into(), 101),
        ]
    );
    for n in 0..3 {
        assert_eq!(t.s.subscription(n), None);
    }
    // Nothing is left to remove.
    t.s.unsubscribe_all(&t.b);
    assert_eq!(t.b.take(), []);
    assert!(t.written().is_empty());
    // (Probing the state the connection would drop:) t1's bytes are free
    // and t1 is gone.
    t.ok("BEGIN\ntransaction:t2\n\n");
    assert!(t.send(&send("t2")).is_empty());
    assert_eq!(
        t.fails("COMMIT\ntransaction:t1\nreceipt:c\n\n", CloseCode::Protocol),
        error("unknown transaction", Some("c"), "no open transaction 't1'")
    );
}

#[test]
fn receipts_come_in_frame_order_whatever_answers_first() {
    let mut b = Fake::new();
    b.defer_receipts = true;
    let mut t = T::connected_with(b, "1.2");
    // The owner answers the SUBSCRIBE later, the writer the SEND; BEGIN is
    // done at once but comes after both.
    assert!(
        t.ok("SUBSCRIBE\nid:s1\ndestination:/topic/b\nreceipt:sub\n\n")
            .is_empty()
    );
    assert!(
        t.ok("SEND\ndestination:/topic/b\nreceipt:send\n\nx")
            .is_empty()
    );
    assert!(t.ok("BEGIN\ntransaction:t1\nreceipt:begin\n\n").is_empty());
    // The commit overtakes the owner's answer: nothing may go out yet.
    t.s.deferred_receipt(&mut t.out, "send");
    assert!(t.written().is_empty());
    t.s.deferred_receipt(&mut t.out, "sub");
    assert_eq!(
        t.written(),
        [receipt("sub"), receipt("send"), receipt("begin")]
    );
    // Nothing is owed any more: at once again.
    assert_eq!(
        t.ok("BEGIN\ntransaction:t2\nreceipt:b2\n\n"),
        [receipt("b2")]
    );
}
