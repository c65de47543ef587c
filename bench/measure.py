"""Run a command and print its peak RSS (KiB) as the last line of stderr.

Started as a small fresh process, so the child it forks is not a copy-on-write image of the
big benchmark process: getrusage(RUSAGE_CHILDREN) then is the tool's own peak.
"""
import resource
import subprocess
import sys

code = subprocess.call(sys.argv[1:])
sys.stderr.write(f"\npeak-rss-kib {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
sys.exit(code)
