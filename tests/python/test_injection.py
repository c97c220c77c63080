"""No client byte can forge a frame for another client (issue 10, defect 3).

A NUL inside a SEND header used to be stored and copied raw into every
subscriber's MESSAGE, ending it early: the subscriber then parsed a second,
forged MESSAGE whose headers and body the sender chose. Header names and
values may hold neither NUL nor a bare CR (a CR is only part of a CRLF line
end); such a frame gets an ERROR naming the byte. Everything a client sends
that reaches another frame is checked: headers of SEND (copied to MESSAGE),
receipts (echoed in RECEIPT and ERROR), subscription ids (in MESSAGE), the
login (in CONNECTED and every MESSAGE's x-sender).
"""
import pytest

from stampede_client import ConnectionClosed, Timeout, build_frame, uid

TRANSPORTS = ["tcp", "ws"]

FORGED = "x\x00MESSAGE"


def subscriber(server, transport, version="1.2"):
    room = uid("room")
    dest = f"/topic/{room}"
    sub = server.connected(transport, version=version)
    sub.subscribe(dest, "s1", receipt="r-sub")
    return sub, dest


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_a_nul_in_a_send_header_value_is_refused_and_never_reaches_subscribers(server, transport, version):
    sub, dest = subscriber(server, transport)
    pub = server.connected(transport, version=version)
    # The attack: the value ends the MESSAGE early; the headers after it
    # become a forged second frame whose content the sender chose.
    pub.send_raw(build_frame("SEND", [("destination", dest), ("a", FORGED),
                                      ("subscription", "s1"), ("destination", "/topic/forged"),
                                      ("message-id", "forged:1")], "not what was sent"))
    err = pub.expect_error("NUL")
    assert "header" in err["message"].lower(), err
    sub.assert_silent(0.5, "MESSAGE from a refused SEND")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_nul_in_a_header_name_is_refused(server, transport):
    sub, dest = subscriber(server, transport)
    pub = server.connected(transport)
    pub.send_raw(build_frame("SEND", [("destination", dest), ("a\x00b", "v")], "hi"))
    pub.expect_error("NUL")
    sub.assert_silent(0.3)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bare_cr_in_a_header_is_refused(server, transport):
    sub, dest = subscriber(server, transport)
    pub = server.connected(transport)
    pub.send_raw(build_frame("SEND", [("destination", dest), ("a", "x\rMESSAGE")], "hi"))
    pub.expect_error("carriage return")
    sub.assert_silent(0.3)


def test_crlf_line_ends_are_still_fine(server):
    sub, dest = subscriber(server, "tcp")
    pub = server.connected("tcp")
    pub.send_raw(build_frame("SEND", [("destination", dest), ("k", "v")], "hi", eol=b"\r\n"))
    m = sub.expect_message()
    assert m["k"] == "v" and m.body == b"hi"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_receipt_with_a_nul_is_not_echoed_raw(server, transport):
    pub = server.connected(transport)
    pub.send_raw(build_frame("SUBSCRIBE", [("destination", "/topic/" + uid("r")), ("id", "s"),
                                           ("receipt", "r\x00MESSAGE")]))
    err = pub.recv_frame()
    assert err.command == "ERROR", err
    assert "\x00" not in (err.get("receipt-id") or ""), err
    # Nothing follows the ERROR but the close: no second, forged frame.
    with pytest.raises(ConnectionClosed):
        pub.recv_frame(timeout=2)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_login_with_a_nul_is_refused(server, transport):
    c = server.client(transport)
    c.send_raw(build_frame("CONNECT", [("accept-version", "1.2"), ("login", "eve\x00MESSAGE")]))
    err = c.expect_error("NUL")
    assert "\x00" not in str(err.headers), err


def test_content_length_with_a_sign_is_not_a_number(server):
    c = server.connected("tcp")
    c.send_raw(build_frame("SEND", [("destination", "/topic/" + uid("r"))], "abc",
                           content_length="+3"))
    c.expect_error("content-length")
