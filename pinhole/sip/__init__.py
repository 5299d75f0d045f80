"""SIP for pinhole: RFC 3261 over UDP with RFC 3581 symmetric response routing.

- :mod:`pinhole.sip.message`: the pure codec (parse, build, encode messages and headers);
- :mod:`pinhole.sip.transaction`: client/server transactions and their timers (§17, RFC 6026);
- :mod:`pinhole.sip.transport`: the asyncio UDP endpoint (§18, RFC 3581, STUN demultiplexing);
- :mod:`pinhole.sip.dialog`: dialog state and in-dialog requests (§12).
"""

from pinhole.sip.dialog import Dialog, DialogError
from pinhole.sip.message import (
    MAGIC_COOKIE,
    AbsoluteUri,
    CSeq,
    Headers,
    Message,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    Uri,
    Via,
    make_ack,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    reason_phrase,
)
from pinhole.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    SipTimeout,
    SipTimers,
    SipTransactionError,
    TransactionState,
    TransactionStateError,
    TwoXXRetransmission,
    retransmit_2xx,
)
from pinhole.sip.transport import SipEndpoint, response_destination, stamp_via

__all__ = [
    "MAGIC_COOKIE",
    "AbsoluteUri",
    "CSeq",
    "ClientTransaction",
    "Dialog",
    "DialogError",
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "ServerTransaction",
    "SipEndpoint",
    "SipParseError",
    "SipTimeout",
    "SipTimers",
    "SipTransactionError",
    "SipUri",
    "TransactionState",
    "TransactionStateError",
    "TwoXXRetransmission",
    "Uri",
    "Via",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "reason_phrase",
    "response_destination",
    "retransmit_2xx",
    "stamp_via",
]
