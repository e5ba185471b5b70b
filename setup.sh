# Sourced by the Procfile: bind Gradio to all interfaces on Heroku's $PORT.
export GRADIO_SERVER_NAME=0.0.0.0
export GRADIO_SERVER_PORT="${PORT:-7860}"
export GRADIO_ANALYTICS_ENABLED=False
