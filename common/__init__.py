"""What the coordinator and the clients both import: models, data, distillation, privacy."""
