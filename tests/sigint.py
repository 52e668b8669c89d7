"""For tests that press Ctrl-C on a child process (send it SIGINT).

A shell that starts a job in the background without job control (a CI
runner, `nohup ... &`) sets SIGINT to "ignored", children inherit that, and
Python then installs no KeyboardInterrupt handler: the test's Ctrl-C would
do nothing. ``restore_sigint`` as a Popen ``preexec_fn`` gives the child the
default, as a terminal's foreground process has."""

import signal


def restore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
