"""Frames on the SEQPACKET connection between an application process and its sender.

An application process writes events to its own write-ahead file (see ``_channel``);
the connection carries everything else, one msgpack array per SEQPACKET message:

==============================================  =============================================
app -> sender                                    meaning
==============================================  =============================================
``[HELLO, pid, [wal names], version, drops]``    here I am; these are my write-ahead files;
                                                 ``drops`` ``{reason: n}``: events this
                                                 process lost (``spill_failed``) since its
                                                 last HELLO, added to the sender's persisted
                                                 ``dropped``. Optional: a 4-element HELLO
                                                 (older clients) reports none
``[WAKE]``                                       new data in my file, and the doorbell said you sleep
``[FLUSH, req, [[name, size], ...]]``            answer when everything up to these sizes is settled
``[STATS, req]``                                 answer with your counters
``[STOP, req]``                                  drain and exit (the CLI's ``mpsender stop``)
a msgpack map                                    an event, sent here only when the disk refused it
==============================================  =============================================

The sender answers ``[REPLY, req, payload]``. A HELLO is sent at each (re)connection and when
a process opens a new file; the drops it carries are counted once (the process remembers
what it reported), so an event a process could hand to no sender is still counted by one.
"""

from __future__ import annotations

import msgpack

HELLO = 1
WAKE = 2
FLUSH = 3
STATS = 4
STOP = 5
REPLY = 10

WAKE_FRAME: bytes = msgpack.packb([WAKE])
#: largest control frame either side sends (a flush listing many files stays far below)
MAX_CONTROL = 1 << 20
