"""The pages of the web UI: each is a Streamlit page script with a render() function."""
