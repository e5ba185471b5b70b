# Sourced by the Procfile: listen on all interfaces on Heroku's $PORT.
export HOST="${HOST:-0.0.0.0}"
export PORT="${PORT:-7860}"
export GRADIO_ANALYTICS_ENABLED=False
# glibc hands buffers over 128 kB back to the system when they are freed,
# instead of keeping them in each thread's heap: ~17 MB less at the peak.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
