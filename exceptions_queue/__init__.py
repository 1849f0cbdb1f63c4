"""The exception queue and approvals app: failures a person fixes, maker-checker decisions and their
policies."""
