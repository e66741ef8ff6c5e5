"""Development and operations tools: benchmark, rehearsal, recorder, demo, SDK oracle."""
