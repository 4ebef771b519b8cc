"""What every use of antiphon shares: the frame path, model loading, the real-time loop,
events, recordings and the files the front doors exchange. Imports `model` and `audio_io`,
never a front door (talk, serve, run, eval, train, bench) nor `app.wire`."""
