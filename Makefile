# The two README commands. Each sets itself up (apt packages, .venv, pinned install).
.PHONY: demo test setup

# Extra flags for the demo, e.g. make demo DEMO_ARGS="--quick --workdir=/tmp/gpa"
DEMO_ARGS ?=
# Extra flags for pytest, e.g. make test PYTEST_ARGS="-k audio -x"
PYTEST_ARGS ?=

setup:
	bash launch/setup_env.sh

demo: setup
	.venv/bin/python -m launch.demo $(DEMO_ARGS)

test:
	bash launch/run_tests.sh $(PYTEST_ARGS)
