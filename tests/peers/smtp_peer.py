"""python3 smtp_peer.py PORT OUTDIR [--tls CERT KEY] [--require-auth] [--reject-rcpt ADDR] [--smtputf8]

An aiosmtpd server on 127.0.0.1:PORT for the tests (docs: /work/shared/test-peers.md A.3).
Accepts user/secret for AUTH; writes each message to OUTDIR/NNNN.eml and OUTDIR/NNNN.json
(mail_from, rcpt_tos, mail_options, authenticated, login, tls); prints READY when listening.
--tls offers STARTTLS; --require-auth answers 530 until authenticated;
--reject-rcpt ADDR answers 550 to RCPT TO:<ADDR>.
--smtputf8 offers SMTPUTF8 (RFC 6531); without it the server reads commands as strict ASCII.
"""
import asyncio, json, warnings, os, signal, ssl, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
warnings.simplefilter("ignore")
port, out = int(sys.argv[1]), sys.argv[2]
tls = None
if "--tls" in sys.argv:
    i = sys.argv.index("--tls")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(sys.argv[i + 1], sys.argv[i + 2])
require_auth = "--require-auth" in sys.argv
smtputf8 = "--smtputf8" in sys.argv
reject = None
if "--reject-rcpt" in sys.argv:
    reject = sys.argv[sys.argv.index("--reject-rcpt") + 1]
os.makedirs(out, exist_ok=True)
def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"user" and auth_data.password == b"secret"
    return AuthResult(success=ok, handled=False, auth_data=auth_data)
class Handler:
    n = 0
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if reject is not None and address == reject:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        Handler.n += 1
        base = os.path.join(out, "%04d" % Handler.n)
        with open(base + ".eml", "wb") as f: f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "mail_options": envelope.mail_options,
                       "authenticated": session.authenticated,
                       "login": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
                       "tls": session.ssl is not None}, f)
        print("DELIVERED", base, flush=True)
        return "250 OK"
async def main():
    loop = asyncio.get_running_loop()
    factory = lambda: SMTP(Handler(), hostname="localhost", tls_context=tls, require_starttls=False,
                           authenticator=authenticator, auth_required=require_auth, auth_require_tls=False,
                           enable_SMTPUTF8=smtputf8)
    srv = await loop.create_server(factory, "127.0.0.1", port)
    print("READY", port, flush=True)
    stop = asyncio.Event()
    for s in (signal.SIGINT, signal.SIGTERM): loop.add_signal_handler(s, stop.set)
    await stop.wait(); srv.close()
asyncio.run(main())
