from tuneloop.serve import main

from .app import create_app
from .settings import InferenceSettings

if __name__ == "__main__":
    main(create_app, InferenceSettings)
