# Sourced by the Procfile: bind Gradio to all interfaces on Heroku's $PORT.
export GRADIO_SERVER_NAME=0.0.0.0
export GRADIO_SERVER_PORT="${PORT:-7860}"
export GRADIO_ANALYTICS_ENABLED=False
# glibc hands buffers over 128 kB back to the system when they are freed,
# instead of keeping them in each thread's heap: ~17 MB less at the peak.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
