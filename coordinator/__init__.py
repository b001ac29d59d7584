"""The Flower ServerApp: hosts the teacher, runs rounds, aggregates soft labels."""
