# Sourced by the Procfile: listen on all interfaces on Heroku's $PORT.
export HOST="${HOST:-0.0.0.0}"
export PORT="${PORT:-7860}"
# On a dyno ($DYNO is set), Heroku's router appends the address that connected
# to it to X-Forwarded-For: that last entry tells the page's clients apart.
if [ -n "${DYNO:-}" ]; then export FORWARDED_HOPS="${FORWARDED_HOPS:-1}"; fi
# glibc hands blocks of 2 MB and more back to the system when they are freed
# (a large image's decode buffers) instead of keeping them in each thread's
# heap; smaller ones, an ordinary photo's, stay for the next request. At
# 128 kB every request mapped its buffers afresh: ~770 page faults, +3 to
# +10 ms a classification.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-2097152}"
