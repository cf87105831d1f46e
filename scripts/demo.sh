#!/usr/bin/env bash
# The main job, shown without any internet: decides a few destinations
# against the standard profile plus a block rule. (Replaced by a launcher run
# against the fake internet once the launcher lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin/egressd check --profile standard --block 'gist.github.com' \
	pypi.org github.com:22 gist.github.com evil.example 169.254.169.254:80 'api.github.com.' 'GitHub.COM'
