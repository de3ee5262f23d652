"""Integration tests: real ``kvapp serve`` processes on 127.0.0.1."""
