"""Who may use a gallery: secret hashing, API keys, the UI's users, names, the exposure rule, and
the API's limits (token bucket and bounded pool) against brute force."""
import asyncio
import threading
import time

import pytest

from faceverify.access import UserFile, check_exposure, check_secret, hash_secret, is_loopback
from faceverify.errors import ExposureError, FaceVerifyError, InvalidNameError
from faceverify.gallery import identity_name

pytestmark = pytest.mark.data_free


def test_secrets_hash_slowly_with_salt_and_check_exactly():
    encoded = hash_secret("correct horse battery")
    assert encoded.startswith("scrypt$16384$8$1$") and "correct" not in encoded
    assert encoded != hash_secret("correct horse battery")  # a fresh salt each time
    assert check_secret("correct horse battery", encoded)
    for wrong in ("correct horse batter", "Correct horse battery", ""):
        assert not check_secret(wrong, encoded)
    for malformed in ("", "scrypt$1$2", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA"):
        assert not check_secret("anything", malformed)


@pytest.mark.parametrize("name, problem", [
    ("", "non-empty"), ("   ", "non-empty"), ("x" * 10_000, "too long"), ("../etc/passwd", "path separator"),
    ("a\\b", "path separator"), ("bell\x07", "U+0007"), ("nul\x00", "U+0000"), ("line\nbreak", "U+000A"),
    ("evil\u202eexe.jpg", "U+202E"), ("zero\u200bwidth", "U+200B"), ("tab\there", "U+0009"),
    ("\ue000private", "U+E000")])
def test_names_are_one_short_line_of_visible_text(name, problem):
    with pytest.raises(InvalidNameError, match=problem.replace("+", r"\+")):
        identity_name(name)


def test_ordinary_names_pass_normalised():
    assert identity_name("  Zoë Ångström-O'Neil Jr. ") == "Zoë Ångström-O'Neil Jr."
    assert identity_name("Zoe\u0308") == "Zoë"  # NFC: one spelling per name
    assert identity_name("王小明") == "王小明"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) == loopback


def test_nothing_listens_beyond_this_machine_without_a_login():
    check_exposure("127.0.0.1")
    for host, share in (("0.0.0.0", False), ("127.0.0.1", True), ("192.168.1.5", False)):
        with pytest.raises(ExposureError, match="without a login"):
            check_exposure(host, share)
        check_exposure(host, share, login=True)
        check_exposure(host, share, insecure=True)


def test_user_file_keeps_only_hashes_written_atomically_and_private(tmp_path):
    path = tmp_path / "users.json"
    users = UserFile(path)
    users.add("alice", "a long passphrase")
    with pytest.raises(FaceVerifyError, match="at least"):
        users.add("bob", "short")
    text = path.read_text()
    assert "a long passphrase" not in text and "scrypt$" in text
    assert path.stat().st_mode & 0o077 == 0  # owner only
    again = UserFile(path)
    assert again.check("alice", "a long passphrase")
    assert not again.check("alice", "a long passphrasE") and not again.check("mallory", "a long passphrase")
    again.remove("alice")
    assert not UserFile(path).check("alice", "a long passphrase")
    path.write_text("{not json")
    with pytest.raises(FaceVerifyError, match="cannot read the auth file"):
        UserFile(path)


def test_rate_limiter_matches_a_brute_force_token_bucket(monkeypatch):
    from faceverify_api.errors import ApiError
    from faceverify_api.limits import RateLimiter

    clock = [100.0]
    monkeypatch.setattr("faceverify_api.limits.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(rate=2.0, burst=3)
    tokens, last, allowed = 3.0, 100.0, []
    for step in [0, 0, 0, 0, 0.2, 0.3, 0.5, 0.1, 0, 2.0, 0, 0, 0, 0]:
        clock[0] += step
        tokens = min(3.0, tokens + (clock[0] - last) * 2.0)
        last = clock[0]
        expected = tokens >= 1
        tokens -= expected
        try:
            limiter.take("k")
            allowed.append(True)
        except ApiError as exc:
            assert exc.status == 429 and int(exc.headers["Retry-After"]) >= 1
            allowed.append(False)
        assert allowed[-1] == expected
    assert allowed.count(False) >= 3
    limiter.take("another key")  # buckets are per key


def test_a_full_inference_pool_answers_503_at_once():
    from faceverify_api.errors import ApiError
    from faceverify_api.limits import InferencePool

    release = threading.Event()
    pool = InferencePool(workers=1, queue=1, timeout_s=30)

    async def scenario():
        running = [asyncio.ensure_future(pool.run(release.wait)) for _ in range(2)]  # one runs, one waits
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            await pool.run(release.wait)
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 1  # refused, not queued
        release.set()
        assert await asyncio.gather(*running) == [True, True]
        assert await pool.run(lambda: 42) == 42  # slots come back

    asyncio.run(scenario())
    slow = InferencePool(workers=1, queue=0, timeout_s=0.2)
    with pytest.raises(ApiError) as late:
        asyncio.run(slow.run(time.sleep, 1))
    assert late.value.status == 504
    pool.shutdown()
    slow.shutdown()
