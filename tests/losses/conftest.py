import os
import sys

# trl_reference lives next to the tests that use it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
