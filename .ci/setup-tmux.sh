#!/usr/bin/env bash
# Debian's tmux, for tests/test_terminal.py (it runs insert_data in a terminal and reads the
# screen). Does nothing when tmux is there.
set -euo pipefail
if command -v tmux >/dev/null; then
  echo "tmux already installed: $(tmux -V)"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends tmux
tmux -V
