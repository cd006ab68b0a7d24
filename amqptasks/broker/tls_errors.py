"""What a failed TLS handshake means, for a user: which certificate problem, and what to check."""

from __future__ import annotations

import ssl

__all__ = ["explain"]

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code), grouped by what the user does next.
_UNTRUSTED = {18, 19, 20, 21, 2, 27, 32}  # self-signed, self-signed in chain, unknown issuer, ...
_WRONG_NAME = {62, 64}  # hostname mismatch, IP address mismatch
_EXPIRED = {9, 10}  # not yet valid, expired


def explain(exc: ssl.SSLError) -> str:
    """``TLS: <what is wrong> (<OpenSSL's words>); <what to check>``."""
    code = getattr(exc, "verify_code", None)
    words = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        words = f"certificate verify failed: {words}"
    if code in _UNTRUSTED:
        return (
            f"TLS: the server's certificate is not signed by a trusted CA ({words}); give the CA that signed it "
            "(broker.tls.ca_file, or cacertfile= in the URL)"
        )
    if code in _WRONG_NAME:
        return (
            f"TLS: the server's certificate is not for the host in the broker URL ({words}); connect by a name the "
            "certificate lists, or name the one to check (broker.tls.server_hostname, or server_name_indication=)"
        )
    if code in _EXPIRED:
        return f"TLS: the server's certificate is outside its validity period ({words}); renew it on the broker"
    if exc.reason and "WRONG_VERSION_NUMBER" in exc.reason:
        return f"TLS handshake failed ({words}): is this port a TLS listener? (amqps:// needs the broker's TLS port)"
    return f"TLS handshake failed ({words})"
