"""Every command the greenstalk client (PyPI) offers, against a server
speaking the beanstalkd protocol, with its replies checked.

Usage: python3 test_greenstalk.py HOST PORT

Run by crates/millpond-cli/tests/serve_greenstalk.rs against `millpond serve`
(it also passes against beanstalkd 1.12 started with `-z 65536`). Exits
non-zero with a traceback on the first failed check. The server must be
fresh: the checks count jobs and tubes.
"""

import socket
import sys
import time

import greenstalk

HOST = sys.argv[1]
PORT = int(sys.argv[2])
ADDR = (HOST, PORT)
STEPS = []
MILLPOND = False


def step(name):
    STEPS.append(name)
    print("step:", name, flush=True)


def expect_error(kind, fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
    except kind:
        return
    raise AssertionError(f"{fn.__name__}{args}: expected {kind.__name__}, got {result!r}")


def per_job_counter(st, key, want):
    """millpond keeps no per-job timeouts/releases/buries/kicks counters and
    reports 0 (docs/beanstalkd-compat.md); beanstalkd counts them."""
    expected = 0 if MILLPOND else want
    assert st[key] == expected, (key, expected, st)


def client(**kwargs):
    c = greenstalk.Client(ADDR, **kwargs)
    # No call may hang the test: greenstalk reads from a blocking socket.
    c._sock.settimeout(15)
    return c


def main():
    global MILLPOND
    step("connect, using, watching")
    a = client()
    MILLPOND = a.stats()["version"].startswith("millpond")
    assert a.using() == "default", a.using()
    assert a.watching() == ["default"], a.watching()
    assert a.tubes() == ["default"], a.tubes()

    step("put, peek, reserve, delete")
    jid = a.put("hello")
    assert isinstance(jid, int) and jid >= 0, jid
    job = a.peek(jid)
    assert (job.id, job.body) == (jid, "hello"), job
    job = a.peek_ready()
    assert (job.id, job.body) == (jid, "hello"), job
    job = a.reserve(timeout=0)
    assert (job.id, job.body) == (jid, "hello"), job
    st = a.stats_job(job)
    assert st["id"] == jid and st["state"] == "reserved", st
    assert st["tube"] == "default" and st["pri"] == 2**16 and st["ttr"] == 60, st
    assert st["reserves"] == 1 and 0 < st["time-left"] <= 60, st
    a.delete(job)
    expect_error(greenstalk.NotFoundError, a.peek, jid)
    expect_error(greenstalk.NotFoundError, a.delete, jid)
    expect_error(greenstalk.NotFoundError, a.stats_job, jid)

    step("bytes bodies")
    raw = client(encoding=None)
    body = bytes(range(256)) + b"\r\n\r\n"
    bid = raw.put(body)
    got = raw.reserve(timeout=0)
    assert (got.id, got.body) == (bid, body), got
    raw.delete(got)
    big = b"x" * 60000
    bid = raw.put(big)
    assert raw.peek(bid).body == big
    raw.delete(bid)
    raw.close()

    step("priorities order reserves")
    ids = {}
    for pri, name in [(10, "ten"), (5, "five"), (4294967295, "max"), (0, "zero"), (5, "five-b")]:
        ids[name] = a.put(name, priority=pri)
    order = []
    for n in range(5):
        # Plain `reserve` (no timeout) and `reserve-with-timeout` by turns.
        j = a.reserve() if n % 2 else a.reserve(timeout=0)
        order.append(j.body)
        a.delete(j)
    assert order == ["zero", "five", "five-b", "ten", "max"], order
    expect_error(greenstalk.TimedOutError, a.reserve, timeout=0)

    step("use, watch, ignore, tubes")
    a.use("jobs")
    assert a.using() == "jobs"
    assert sorted(a.tubes()) == ["default", "jobs"], a.tubes()
    assert a.watch("jobs") == 2
    assert a.watch("jobs") == 2
    assert sorted(a.watching()) == ["default", "jobs"], a.watching()
    assert a.ignore("default") == 1
    assert a.watching() == ["jobs"], a.watching()
    expect_error(greenstalk.NotIgnoredError, a.ignore, "jobs")
    names = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"
    b = client(use=names, watch=[names, "other"])
    assert b.using() == names
    assert sorted(b.watching()) == sorted([names, "other"]), b.watching()
    nid = b.put("odd name")
    assert b.peek_ready().id == nid
    st = b.stats_tube(names)
    assert st["name"] == names and st["current-jobs-ready"] == 1, st
    assert st["current-using"] == 1 and st["current-watching"] == 1, st
    job = b.reserve(timeout=0)
    assert (job.id, job.body) == (nid, "odd name"), job
    assert b.stats_job(job)["tube"] == names
    b.delete(job)
    expect_error(greenstalk.BadFormatError, b.use, "-starts-with-hyphen")
    expect_error(greenstalk.BadFormatError, b.watch, "x" * 201)
    expect_error(greenstalk.NotFoundError, b.stats_tube, "never-used")
    b.close()

    step("delay, peek_delayed, kick")
    a.use("delays")
    a.watch("delays")
    d1 = a.put("later", delay=100)
    d2 = a.put("later-2", delay=200)
    st = a.stats_job(d1)
    assert st["state"] == "delayed" and st["delay"] == 100, st
    assert 98 <= st["time-left"] <= 100, st
    assert a.peek_delayed().id == d1
    expect_error(greenstalk.NotFoundError, a.peek_ready)
    expect_error(greenstalk.NotFoundError, a.peek_buried)
    expect_error(greenstalk.TimedOutError, a.reserve, timeout=0)
    assert a.kick(1) == 1
    assert a.peek_ready().id == d1
    a.kick_job(d2)
    assert a.stats_job(d2)["state"] == "ready"
    expect_error(greenstalk.NotFoundError, a.kick_job, d2)
    assert a.kick(10) == 0
    st = a.stats_tube("delays")
    assert st["current-jobs-ready"] == 2 and st["current-jobs-delayed"] == 0, st
    assert st["total-jobs"] == 2, st

    step("release, bury, kick, touch")
    job = a.reserve(timeout=0)
    assert job.id == d1, job
    a.touch(job)
    a.release(job, priority=7)
    st = a.stats_job(d1)
    assert st["state"] == "ready" and st["pri"] == 7, st
    per_job_counter(st, "releases", 1)
    job = a.reserve(timeout=0)
    assert job.id == d1
    a.bury(job, priority=3)
    st = a.stats_job(d1)
    assert st["state"] == "buried" and st["pri"] == 3, st
    per_job_counter(st, "buries", 1)
    assert a.peek_buried().id == d1
    job2 = a.reserve(timeout=0)
    assert job2.id == d2
    a.bury(job2)
    assert a.stats_tube("delays")["current-jobs-buried"] == 2
    assert a.kick(1) == 1
    assert a.peek_buried().id == d2
    a.kick_job(d2)
    per_job_counter(a.stats_job(d2), "kicks", 2)  # from delayed, then from buried
    expect_error(greenstalk.NotFoundError, a.peek_buried)
    job = a.reserve(timeout=0)
    a.release(job, delay=50)
    assert a.stats_job(job)["state"] == "delayed"
    expect_error(greenstalk.NotFoundError, a.touch, job)
    expect_error(greenstalk.NotFoundError, a.release, job)
    expect_error(greenstalk.NotFoundError, a.bury, job)
    for jid in (d1, d2):
        a.delete(jid)
    expect_error(greenstalk.NotFoundError, a.peek_delayed)

    step("reserve_job")
    a.use("byid")
    a.watch("byid")
    r1 = a.put("first")
    r2 = a.put("second")
    job = a.reserve_job(r2)
    assert (job.id, job.body) == (r2, "second"), job
    expect_error(greenstalk.NotFoundError, a.reserve_job, r2)
    expect_error(greenstalk.NotFoundError, a.reserve_job, 999999999)
    other = client(watch="byid")
    expect_error(greenstalk.NotFoundError, other.delete, r2)
    expect_error(greenstalk.NotFoundError, other.touch, job)
    job1 = other.reserve(timeout=0)
    assert job1.id == r1
    other.delete(job1)
    a.delete(r2)

    step("reservations come back when a client disconnects")
    r3 = a.put("orphan")
    other.reserve(timeout=0)
    other.close()
    job = a.reserve(timeout=5)
    assert job.id == r3, job
    a.delete(job)

    step("TTR: DeadlineSoonError, then the job times out")
    a.use("ttr")
    a.watch("ttr")
    t1 = a.put("short", ttr=1)
    job = a.reserve(timeout=0)
    assert job.id == t1
    expect_error(greenstalk.DeadlineSoonError, a.reserve, timeout=0)
    time.sleep(1.5)
    # (beanstalkd notices a timeout lazily; a command from the holder makes
    # it look.)
    assert a.using() == "ttr"
    st = a.stats_job(t1)
    assert st["state"] == "ready", st
    per_job_counter(st, "timeouts", 1)
    job = a.reserve(timeout=0)
    assert job.id == t1
    a.delete(job)

    step("reserve with a timeout waits")
    start = time.monotonic()
    expect_error(greenstalk.TimedOutError, a.reserve, timeout=1)
    waited = time.monotonic() - start
    assert 0.9 <= waited < 5, waited

    step("pause_tube")
    a.use("paused")
    a.watch("paused")
    p1 = a.put("paused job")
    a.pause_tube("paused", 1)
    st = a.stats_tube("paused")
    assert st["pause"] == 1 and st["pause-time-left"] <= 1 and st["cmd-pause-tube"] == 1, st
    # Other watched tubes are empty, so nothing is ready until the pause ends.
    expect_error(greenstalk.TimedOutError, a.reserve, timeout=0)
    job = a.reserve(timeout=5)
    assert job.id == p1
    a.delete(job)
    expect_error(greenstalk.NotFoundError, a.pause_tube, "never-used", 1)

    step("JobTooBigError")
    c = client()
    limit = c.stats()["max-job-size"]
    expect_error(greenstalk.JobTooBigError, c.put, "x" * (limit + 1))
    # The connection stays usable.
    cid = c.put("x" * limit)
    assert len(c.peek(cid).body) == limit
    c.delete(cid)

    step("stats")
    st = c.stats()
    assert st["current-connections"] >= 2, st
    # 18 puts in this script, one of them too big; 2 plain reserves.
    assert st["cmd-put"] == 18 and st["total-jobs"] == 17, st
    assert st["cmd-reserve"] == 2, st
    assert st["job-timeouts"] == 1, st
    assert st["current-jobs-ready"] == 0 and st["current-jobs-reserved"] == 0, st
    assert st["draining"] == "false", st
    for key in ["pid", "uptime", "version", "total-connections", "current-tubes"]:
        assert key in st, key
    c.close()

    step("unknown replies and commands")
    s = socket.create_connection(ADDR, timeout=15)
    s.sendall(b"no-such-command\r\n")
    assert s.recv(100) == b"UNKNOWN_COMMAND\r\n"
    s.close()

    a.close()
    print("ok:", len(STEPS), "steps", flush=True)


if __name__ == "__main__":
    main()
