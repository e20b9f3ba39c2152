"""The MusicGen studio: the Gradio web app on top of the engine (the only package that imports Gradio).

Modules, from the page down: launch (command line, server), page (components and wiring), api (the
/generate and /generate_takes endpoints), page_text (what the page says), backend (state shared by every
visitor, errors for people, Stop), session (one request as a stream of progress, audio chunks and results),
request (a visitor's fields, checked), catalog (the checkpoints offered), models (the model in memory and its
scheduler), history (the browser's past takes), picture (waveform + spectrogram), waits (how long a diffusion
decode will take). `python app.py` starts it (launch.main).
"""
