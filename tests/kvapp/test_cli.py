"""``kvapp serve`` flag validation and the data directory's identity file (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvapp.cli import UsageError, load_or_create_identity, main, parse_serve_args

THREE = "a=http://127.0.0.1:3001,b=http://127.0.0.1:3002,c=http://127.0.0.1:3003"


def args(*extra: str, name: str = "a", peer: str = "http://127.0.0.1:3001") -> list[str]:
    return ["--name", name, "--listen-peer-urls", peer, "--initial-cluster", THREE, *extra]


def test_defaults_make_a_single_member_cluster(tmp_path: Path) -> None:
    opts, level = parse_serve_args(["--name", "solo", "--data-dir", str(tmp_path / "d")])
    assert level == "info"
    assert [m.name for m in opts.initial_members] == ["solo"]
    assert opts.listen_client == ("127.0.0.1", 2379)
    assert opts.tick_interval == 0.1
    assert opts.election_tick == 10
    assert opts.new_cluster


def test_etcd_timing_flags_become_ticks() -> None:
    opts, _ = parse_serve_args(args("--heartbeat-interval", "50", "--election-timeout", "500"))
    assert opts.tick_interval == 0.05
    assert opts.election_tick == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (args(name="z"), "does not name this member"),
        (args(peer="http://127.0.0.1:9999"), "--listen-peer-urls is"),
        (["--initial-cluster", "a=127.0.0.1:1", "--name", "a"], "bad URL .127.0.0.1:1."),
        (["--initial-cluster", "a:http://x:1"], "not name=http://host:port"),
        (["--listen-client-urls", "localhost"], "--listen-client-urls"),
        (args("--election-timeout", "100"), "at least 5 times"),
        (args("--heartbeat-interval", "0"), "--heartbeat-interval must be positive"),
        (args("--snapshot-count", "0"), "--snapshot-count"),
        (args("--max-request-bytes", "10"), "--max-request-bytes"),
        (args("--min-free-disk-bytes", "-1"), "--min-free-disk-bytes must not be negative"),
        (args("--initial-cluster-token", ""), "token"),
        (args("--experimental-watch-progress-notify-interval", "10"), "not a duration"),
        (args("--experimental-watch-progress-notify-interval", "1x"), "not a duration"),
        (args("--experimental-watch-progress-notify-interval", "0s"), "must be positive"),
        (args("--experimental-watch-progress-notify-interval=-5s"), "positive, not -5s"),
        (args("--experimental-watch-progress-notify-interval=-"), "not a duration"),
        (
            ["--name", "a", "--initial-cluster", "a=http://127.0.0.1:1,b=http://127.0.0.1:1"],
            "given for both",
        ),
    ],
)
def test_bad_flags_are_refused_with_a_message_naming_them(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_serve_args(argv)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10m", 600.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2000000\u00b5s", 2.0),
        ("2000000\u03bcs", 2.0),
        ("+2s", 2.0),
    ],
)
def test_the_progress_notify_interval_is_a_go_duration(value: str, seconds: float) -> None:
    assert parse_serve_args(args())[0].progress_notify_interval == 600.0  # etcd's default
    flag = "--experimental-watch-progress-notify-interval"
    assert parse_serve_args(args(flag, value))[0].progress_notify_interval == seconds


def test_learners_are_promoted_automatically_unless_turned_off() -> None:
    assert parse_serve_args(args())[0].auto_promote
    assert not parse_serve_args(args("--auto-promote-learners", "false"))[0].auto_promote


def test_the_disk_reserve_defaults_to_two_wal_segments_and_a_request() -> None:
    opts, _ = parse_serve_args(args())
    assert opts.min_free_disk_bytes == 2 * 64 * 1024 * 1024 + 1_572_864
    opts, _ = parse_serve_args(args("--max-request-bytes", "2097152"))
    assert opts.min_free_disk_bytes == 2 * 64 * 1024 * 1024 + 2_097_152
    opts, _ = parse_serve_args(args("--min-free-disk-bytes", "0"))
    assert opts.min_free_disk_bytes == 0


def test_bad_flags_exit_with_status_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d"
    status = main(["serve", *args(name="z"), "--data-dir", str(data)])
    assert status == 2
    assert "does not name this member" in capsys.readouterr().err
    assert not data.exists()


def test_unknown_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "usage: kvapp" in capsys.readouterr().err


def test_identity_is_written_once_and_then_authoritative(tmp_path: Path) -> None:
    data = tmp_path / "a"
    opts, _ = parse_serve_args([*args(), "--data-dir", str(data)])
    first = load_or_create_identity(opts)
    assert (data / "member.json").exists()
    # On restart --initial-cluster is ignored: the stored members win.
    other, _ = parse_serve_args(
        ["--name", "a", "--listen-peer-urls", "http://127.0.0.1:3001", "--data-dir", str(data)]
    )
    assert load_or_create_identity(other) == first


def test_another_members_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    opts, _ = parse_serve_args([*args(), "--data-dir", str(data)])
    load_or_create_identity(opts)
    b, _ = parse_serve_args(
        [*args(name="b", peer="http://127.0.0.1:3002"), "--data-dir", str(data)]
    )
    with pytest.raises(UsageError, match="data directory of member 'a', not 'b'"):
        load_or_create_identity(b)


def test_another_clusters_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "a"
    opts, _ = parse_serve_args([*args(), "--data-dir", str(data)])
    load_or_create_identity(opts)
    other, _ = parse_serve_args(
        [*args(), "--data-dir", str(data), "--initial-cluster-token", "other"]
    )
    with pytest.raises(UsageError, match="belongs to cluster"):
        load_or_create_identity(other)


def test_a_non_empty_directory_without_identity_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "a"
    data.mkdir()
    (data / "precious.txt").write_text("keep me")
    opts, _ = parse_serve_args([*args(), "--data-dir", str(data)])
    with pytest.raises(UsageError, match="not empty"):
        load_or_create_identity(opts)
    assert (data / "precious.txt").read_text() == "keep me"


def test_a_damaged_identity_file_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "a"
    data.mkdir()
    (data / "member.json").write_text("{not json")
    opts, _ = parse_serve_args([*args(), "--data-dir", str(data)])
    with pytest.raises(UsageError, match="unreadable member file"):
        load_or_create_identity(opts)
