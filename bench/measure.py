"""Run a command and print its peak RSS (KiB) and CPU seconds (user + system) as the last two
lines of stderr.

Started as a small fresh process, so the child it forks is not a copy-on-write image of the
big benchmark process: getrusage(RUSAGE_CHILDREN) then is the tool's own peak and CPU time.
"""
import resource
import subprocess
import sys

code = subprocess.call(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(f"\npeak-rss-kib {usage.ru_maxrss}\ncpu-seconds {usage.ru_utime + usage.ru_stime:.3f}\n")
sys.exit(code)
