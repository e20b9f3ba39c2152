"""MusicGen studio, the Hugging Face Space's entry point: `python app.py [--share] [--port 7860] ...` (see
`python app.py --help`). The app itself is the package musicgen/studio/."""

from musicgen.studio.launch import main

if __name__ == "__main__":
    main()
