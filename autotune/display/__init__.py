"""What people read: plain-text tables and progress bars."""
