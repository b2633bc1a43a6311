"""Development scripts (the llama.cpp build); importable by the tests."""
