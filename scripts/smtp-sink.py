"""A real SMTP server for backroom's demo and tests (Debian's python3-aiosmtpd).

Accepts mail on 127.0.0.1:PORT and stores each message as an .eml file in DIR. Recipients
starting with "reject" get a permanent 550, those starting with "tempfail" a transient 451, so
tests can see both kinds of refusal. The first RCPT of a recipient starting with "holdrcpt" is
answered only once a file named "release" exists in DIR (it writes "held" when it starts waiting),
so tests can catch a client between RCPT and DATA; every RSET leaves a "rset-*" file. Prints
READY when it listens.
"""

import argparse
import asyncio
import pathlib
import uuid

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.held = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if address.startswith("tempfail"):
            return "451 4.3.0 try again later"
        if address.startswith("holdrcpt") and address not in self.held:
            self.held.add(address)
            (self.directory / "held").write_text(address)
            release = self.directory / "release"
            for _ in range(2400):  # at most 120 s
                if release.exists():
                    break
                await asyncio.sleep(0.05)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        (self.directory / ("rset-" + uuid.uuid4().hex)).touch()
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        name = uuid.uuid4().hex
        tmp = self.directory / (name + ".tmp")
        tmp.write_bytes(envelope.original_content)
        tmp.rename(self.directory / (name + ".eml"))
        return "250 2.0.0 OK queued as %s" % name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    directory = pathlib.Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(Store(directory), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("READY", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
